"""The gradio web demo of ``mmit serve`` (as LLaVA's ``llava.serve.gradio_web_server``): an image
upload, the chat history, a message box, and the decoding controls (temperature, top-p, maximum new
tokens, beams). Answers stream into the chat as they are generated.

An uploaded image goes with the next message; changing the image attaches the new one to the next
message (the earlier images stay in the conversation, up to the server's ``--max-images``). "Clear"
starts a new conversation. Errors (too many images, a prompt over the context) show as a message
and leave the conversation as it was.

Element ids (used by the browser test): ``image``, ``chatbot``, ``msg``, ``send``, ``clear``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List

from mmit.serve.sampling import MAX_NEW_TOKENS_LIMIT, Sampling

TITLE = "mmit: chat with a multimodal checkpoint"


def _image_key(image) -> str:
    return hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


def _empty_state() -> Dict[str, Any]:
    return {"turns": [], "images": [], "image_key": None}


def respond(engine, message: str, image, chat: List[Dict[str, str]], state: Dict[str, Any], temperature: float,
            top_p: float, max_new_tokens: float, num_beams: float, system: str | None = None):
    """Generator behind "Send": yields ``(message box, chat messages, state)`` as the answer streams.
    Raises ``gradio.Error`` (shown in the page) for a bad message or settings; the conversation is then
    unchanged."""
    import gradio as gr

    from mmit.data.sample import SampleError
    from mmit.serve.session import ChatSession

    message = (message or "").strip()
    state = state or _empty_state()
    chat = list(chat or [])
    session = ChatSession(engine, system)
    session.turns = list(state["turns"]) or session.turns
    session.images = list(state["images"])
    key = None
    if image is not None:
        image = image.convert("RGB")
        key = _image_key(image)
        if key != state["image_key"]:
            session.add_image(image)
    if not message and not session.pending:
        raise gr.Error("type a message (or upload an image) first")
    try:
        sampling = Sampling(temperature=float(temperature), top_p=float(top_p), num_beams=int(num_beams),
                            max_new_tokens=int(max_new_tokens), seed=engine.sampling.seed)
        shown = (f"[image] {message}" if session.pending else message) or "[image]"
        chat += [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
        text = ""
        for piece in session.ask(message, sampling):
            text += piece
            chat[-1] = {"role": "assistant", "content": text}
            yield "", chat, state
    except (ValueError, SampleError) as e:
        raise gr.Error(str(e)) from None
    state = {"turns": session.turns, "images": session.images, "image_key": key or state["image_key"]}
    chat[-1] = {"role": "assistant", "content": session.last.text}
    yield "", chat, state


def build_demo(engine, system: str | None = None):
    """The ``gradio.Blocks`` of the demo for ``engine`` (a :class:`~mmit.serve.session.Engine`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    d: Sampling = engine.sampling
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}\nModel **{engine.name}** ({engine.family or 'unknown family'}). Upload an image, "
                    "ask about it, keep talking. The same server answers OpenAI-style requests at "
                    "`POST /v1/chat/completions`.")
        state = gr.State(_empty_state())
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(type="pil", label="Image", elem_id="image", sources=["upload", "clipboard"],
                                 height=280)
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 2.0, value=d.temperature, step=0.05, label="Temperature (0: greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="Top P")
                    max_new = gr.Slider(1, min(2048, MAX_NEW_TOKENS_LIMIT), value=d.max_new_tokens, step=1,
                                        label="Max new tokens")
                    beams = gr.Slider(1, 8, value=d.num_beams, step=1, label="Beams (no streaming above 1)")
            with gr.Column(scale=8):
                chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height=460, render_markdown=False)
                with gr.Row():
                    msg = gr.Textbox(elem_id="msg", show_label=False, placeholder="Enter text and press ENTER",
                                     scale=8, container=False)
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                clear = gr.Button("Clear", elem_id="clear")

        def run(message, img, chat, st, t, p, n, b):
            yield from respond(engine, message, img, chat, st, t, p, n, b, system)

        inputs = [msg, image, chatbot, state, temperature, top_p, max_new, beams]
        outputs = [msg, chatbot, state]
        send.click(run, inputs, outputs, concurrency_limit=1)
        msg.submit(run, inputs, outputs, concurrency_limit=1)
        clear.click(lambda: ("", [], _empty_state(), None), None, [msg, chatbot, state, image], queue=False)
        chatbot.clear(_empty_state, None, state, queue=False)  # the chat's own trash button
    return demo
