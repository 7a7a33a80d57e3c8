"""A loaded checkpoint (:class:`Engine`) and one conversation with it (:class:`ChatSession`), shared
by ``mmit chat`` and the web demo; the OpenAI routes use :meth:`Engine.stream` directly.

A conversation is an optional system turn, then alternating user / assistant turns (the
:class:`~mmit.data.sample.Sample` rules), and the decoded images of its ``<image>`` placeholders in
text order. Every answer is generated from the whole history through the family's inference
contract (:func:`mmit.inference.stream_turns`): the family renders the history (its conversation
template, in-context exchanges, or joined instruction).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.serve.sampling import Sampling


def check_conversation(turns: Sequence[Turn], n_images: int) -> None:
    """Raise ``ValueError`` unless ``turns`` is a valid prompt: at most one leading system turn, user
    and assistant alternating from a user turn, ending with a user turn, exactly one ``<image>`` per
    image and no other media placeholders (:meth:`~mmit.data.sample.Sample.validate`'s rules)."""
    try:
        media = [Media("image", meta={"decoded": True}) for _ in range(n_images)]
        Sample(id="request", turns=list(turns), media=media).validate(allow_empty_answers=True)
    except SampleError as e:
        raise ValueError(str(e).replace("sample 'request': ", "")) from None
    if not turns or turns[-1].role != "user":
        raise ValueError("the conversation must end with a user message")


class Engine:
    """A checkpoint loaded for inference plus a lock: one generation at a time.

    Args:
        model, processor: from :func:`mmit.inference.load_for_inference`.
        name: the model's name (``/v1/models``; the checkpoint folder's name by default).
        sampling: the default decoding settings (``mmit serve`` / ``mmit chat`` flags).
        max_images: images allowed in one conversation (``ValueError`` beyond).
    """

    def __init__(self, model, processor, name: str = "mmit", sampling: Sampling = Sampling(), family: str = "",
                 max_images: int = 4):
        self.model, self.processor, self.name, self.sampling = model, processor, name, sampling
        self.family, self.max_images = family, int(max_images)
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        self.lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint, sampling: Sampling = Sampling(), name: Optional[str] = None, max_images: int = 4,
             trust_remote_code: bool = False) -> "Engine":
        """Load ``checkpoint`` (:func:`~mmit.inference.load_for_inference`; its errors)."""
        from mmit.inference import load_for_inference

        trust = {"trust_remote_code": True} if trust_remote_code else {}
        model, processor, cfg = load_for_inference(checkpoint, **trust)
        model.eval()
        path = Path(checkpoint).resolve()
        return cls(model, processor, name or (path.parent.name if path.name in ("final", "last") else path.name),
                   sampling, getattr(cfg, "family", ""), max_images)

    def context_length(self) -> Optional[int]:
        """The LLM's position limit (``max_position_embeddings`` of ``model.llm``'s config), else None."""
        cfg = getattr(getattr(self.model, "llm", None), "config", None)
        cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
        n = getattr(cfg, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) else None

    def stream(self, turns: Sequence[Turn], images: Sequence[Any], sampling: Optional[Sampling] = None):
        """An :class:`~mmit.inference.AnswerStream` for the conversation (generation runs under
        :attr:`lock`). Raises ``ValueError`` / :class:`SampleError` for a bad conversation, too many
        images or a prompt that does not fit the model's context, before anything runs."""
        from mmit.inference import prompt_batch, stream_turns

        s = sampling or self.sampling
        if len(images) > self.max_images:
            raise ValueError(f"{len(images)} images in the conversation; this server takes at most {self.max_images}")
        check_conversation(turns, len(images))
        limit = self.context_length()
        if limit is not None:
            n = int(prompt_batch(self.model, self.processor, turns, images).attention_mask[0].sum())
            if n + s.max_new_tokens > limit:
                raise ValueError(f"the prompt has {n} tokens; with max_new_tokens={s.max_new_tokens} it exceeds the "
                                 f"model's context of {limit} tokens (fewer images, a shorter history or fewer tokens)")
        s.apply_seed()
        return stream_turns(self.model, self.processor, turns, images, s.max_new_tokens, lock=self.lock,
                            **s.generate_kwargs())


class ChatSession:
    """One conversation: ``turns`` so far, their ``images``, and ``pending`` images that go with the next
    user message (``<image>`` markers put in front of it unless the message has its own)."""

    def __init__(self, engine: Engine, system: Optional[str] = None):
        self.engine, self.system = engine, system
        self.reset()

    def reset(self) -> None:
        """Forget the history and the pending images."""
        self.turns: List[Turn] = [Turn("system", self.system)] if self.system else []
        self.images: List[Any] = []
        self.pending: List[Any] = []
        self.last = None  # the last Answer

    def add_image(self, image) -> None:
        """Attach a decoded RGB PIL image to the next user message."""
        self.pending.append(image)

    def ask(self, text: str, sampling: Optional[Sampling] = None) -> Iterator[str]:
        """Yield the answer to ``text`` piece by piece; when it is complete the exchange (and the pending
        images) join the history and :attr:`last` holds the :class:`~mmit.inference.Answer`. Raises
        ``ValueError`` / :class:`SampleError` (nothing is added to the history then)."""
        from mmit.inference import with_placeholders

        if not text.strip() and not self.pending:
            raise ValueError("empty message")
        content = with_placeholders(text, {"image": len(self.pending)})  # ValueError: marker count
        turns = self.turns + [Turn("user", content)]
        images = self.images + self.pending
        stream = self.engine.stream(turns, images, sampling)
        yield from stream
        self.last = stream.answer
        self.turns = turns + [Turn("assistant", stream.answer.text)]
        self.images, self.pending = images, []
