"""``mmit chat`` (issue 15) driven through a pseudo-terminal (pexpect): two turns about an image, the
history rendered into the second prompt, ``/reset`` that really forgets (the same question then gets
the same prompt length and the same greedy answer as the first time), ``/image``, an error that does
not end the chat, ``/exit``. The first answer equals ``mmit generate``'s on the same inputs.

Also: every text family streams, through the inference contract, exactly its unstreamed greedy answer
for a two-turn history; ``mmit generate``'s sampling flags (shared with chat and serve)."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from conftest import ROOT
from mmit.families import FAMILIES, get_family_class
from serve_common import QUESTION, png_bytes, tiny_llava_checkpoint

ANSWER = re.compile(r"ASSISTANT: (.*?)\r\n\(prompt (\d+) tokens, answer (\d+) tokens\)")


def png_bytes_file(tmp_path):
    path = tmp_path / "dog.png"
    path.write_bytes(png_bytes())
    return path


def ask(child, text):
    """``(answer text, prompt tokens, answer tokens)`` of one message."""
    child.expect_exact("USER: ")
    child.sendline(text)
    child.expect(ANSWER)
    return child.match.group(1), int(child.match.group(2)), int(child.match.group(3))


def command(child, text, reply):
    child.expect_exact("USER: ")
    child.sendline(text)
    child.expect_exact(reply)


def test_chat_two_turns_image_reset(tmp_path_factory, tmp_path, capsys):
    pexpect = pytest.importorskip("pexpect")
    from mmit.cli import main as cli

    ckpt = tiny_llava_checkpoint(tmp_path_factory)
    img = png_bytes_file(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "dumb", "PYTHONPATH": str(ROOT)}
    child = pexpect.spawn(sys.executable, ["-m", "mmit.cli", "chat", "--checkpoint", str(ckpt), "--image", str(img),
                                           "--stats", "--max-new-tokens", "10"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=120, dimensions=(50, 400))
    try:
        child.expect_exact("greedy")
        first, p1, n1 = ask(child, QUESTION)
        second, p2, _ = ask(child, "What color is it?")
        assert p2 > p1 + n1, "the second prompt holds the first exchange"
        command(child, "/image /no/such/file.png", "error: image not found")
        command(child, "/reset", "(conversation reset)")
        command(child, f"/image {img}", "(image attached")
        again, p3, n3 = ask(child, QUESTION)
        assert (again, p3, n3) == (first, p1, n1), "after /reset the same question gets the first turn's prompt"
        bare, p4, _ = ask(child, QUESTION)  # no new image: this prompt is the history plus the question
        assert p4 > p3 + n3
        child.expect_exact("USER: ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert first and first != second

    # the chat's first answer is mmit generate's answer (greedy, same image, prompt and token budget)
    assert cli(["generate", "--checkpoint", str(ckpt), "--image", str(img), "--prompt", QUESTION,
                "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.strip() == first.strip()


TEXT_FAMILIES = sorted(n for n in FAMILIES if get_family_class(n).generates_text)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_every_text_family_streams_its_generate_answer(family, tmp_path):
    """Through the family inference contract: a two-turn chat (image in the first turn) streamed by
    :class:`ChatSession` gives, piece by piece, exactly :func:`generate_turns`' greedy text for the same
    history; beam search (not streamable) comes as one piece with the same text as unstreamed."""
    import torch
    from PIL import Image

    from mmit.data.sample import Turn
    from mmit.families import get_family
    from mmit.inference import generate_turns
    from mmit.serve.sampling import Sampling
    from mmit.serve.session import ChatSession, Engine
    from test_families import family_config

    cfg = family_config(family, tmp_path)
    fam = get_family(family)
    torch.manual_seed(0)
    model, tok = fam.build(cfg, torch.float32)
    model.eval()
    engine = Engine(model, fam.processor(cfg, model, tok), family=family, sampling=Sampling(max_new_tokens=8))
    session = ChatSession(engine)
    session.add_image(Image.open(png_bytes_file(tmp_path)).convert("RGB"))
    image = session.pending[0]
    replies = []
    for text in (QUESTION, "And then?"):
        pieces = list(session.ask(text))
        replies.append(pieces)
        assert "".join(pieces) == session.last.text
    want1 = generate_turns(model, engine.processor, [Turn("user", f"<image>\n{QUESTION}")], [image], 8)
    turns = [Turn("user", f"<image>\n{QUESTION}"), Turn("assistant", want1.text), Turn("user", "And then?")]
    want2 = generate_turns(model, engine.processor, turns, [image], 8)
    assert ["".join(r) for r in replies] == [want1.text, want2.text]
    assert want1.token_ids and want2.prompt_tokens > want1.prompt_tokens, "the history is in the second prompt"
    assert session.turns == turns + [Turn("assistant", want2.text)] and session.images == [image]

    beams = Sampling(max_new_tokens=4, num_beams=2)
    pieces = list(engine.stream(turns, [image], beams))
    want = generate_turns(model, engine.processor, turns, [image], 4, **beams.generate_kwargs())
    assert len(pieces) <= 1 and "".join(pieces) == want.text


def test_generate_sampling_flags(tmp_path_factory, tmp_path, capsys):
    """``mmit generate`` takes the shared sampling flags: a seeded sampled answer repeats, beam search
    runs, and values out of range exit 2 naming the flag."""
    from mmit.cli import main as cli

    ckpt = tiny_llava_checkpoint(tmp_path_factory)
    img = png_bytes_file(tmp_path)
    base = ["generate", "--checkpoint", str(ckpt), "--image", str(img), "--prompt", QUESTION, "--json",
            "--max-new-tokens", "6"]
    outs = []
    for extra in (["--temperature", "1.5", "--top-p", "0.9", "--seed", "7"],) * 2 + (["--num-beams", "2"],):
        assert cli(base + extra) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] and 0 < len(outs[2]["token_ids"]) <= 6
    for flag, value, words in (("--top-p", "0", "top_p must be"), ("--temperature", "-1", "temperature must be"),
                               ("--num-beams", "0", "num_beams must be")):
        assert cli(base + [flag, value]) == 2
        assert words in capsys.readouterr().err


def test_stream_holds_back_stop_strings_and_reraises_errors():
    """Streamed pieces never show a stop string (or the start of one that later completes) and join
    to the final answer; an error in the generation thread is raised by the iteration."""
    from mmit.inference import Answer, AnswerStream, visible_text

    class FakeStreamer(list):
        def end(self):
            pass

    assert visible_text("  Hello ##", ["###"]) == "Hello" and visible_text("Hello ##", ["###"], final=True) == "Hello ##"
    stream = AnswerStream(lambda cancelled: [5, 6, 7], FakeStreamer(["  Hel", "lo #", "#", "# bye"]), ["###"],
                          lambda new: Answer("Hello", new, 3))
    assert list(stream) == ["Hel", "lo"] and stream.answer == Answer("Hello", [5, 6, 7], 3)
    tail = AnswerStream(lambda cancelled: [1], FakeStreamer(["a #", "b"]), ["###"], lambda new: Answer("a #b", new))
    assert "".join(tail) == "a #b"  # held back "#" comes out once it cannot start a stop string

    def boom(cancelled):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        list(AnswerStream(boom, FakeStreamer(), [], lambda new: Answer("", new)))
