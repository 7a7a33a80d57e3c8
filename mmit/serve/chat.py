"""``mmit chat``: a multi-turn conversation with a checkpoint in the terminal, answers streamed as they
are generated (as LLaVA's ``llava.serve.cli``).

Commands typed at the prompt: ``/image PATH`` attaches an image to the next message, ``/reset``
forgets the conversation (history and attached images), ``/exit`` (or end of input) quits. Errors in
one message (an unreadable image, too many images) are printed and the chat goes on.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from mmit.serve.sampling import add_checkpoint_args, add_sampling_args, sampling_from_args

HELP = "commands: /image PATH (attach an image to your next message), /reset (new conversation), /exit"


def read_image(path: str):
    """The RGB PIL image in file ``path``. Raises ``FileNotFoundError`` / :class:`SampleError`."""
    import os

    from mmit.data.media import decode_image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    with open(path, "rb") as f:
        return decode_image(f.read(), path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmit chat", description="Chat with a checkpoint in the terminal. " + HELP)
    add_checkpoint_args(p, "a system message at the start of every conversation")
    p.add_argument("--image", action="append", default=[], help="image attached to the first message (repeatable)")
    p.add_argument("--stats", action="store_true", help="print prompt and answer lengths in tokens after each answer")
    add_sampling_args(p)
    return p


def main(argv: Optional[List[str]] = None, stdin=None, stdout=None) -> int:
    """Run the chat loop on ``stdin`` / ``stdout`` (the terminal by default). Returns 0 on ``/exit`` or
    end of input; raises (exit code 2 through ``mmit``) for a bad checkpoint, flag or ``--image``."""
    from mmit.data.sample import SampleError
    from mmit.serve.session import ChatSession, Engine

    a = parser().parse_args(argv)
    sampling = sampling_from_args(a)
    images = [read_image(p) for p in a.image]  # before the model loads: a bad image fails fast
    stdin, out = stdin or sys.stdin, stdout or sys.stdout
    engine = Engine.load(a.checkpoint, sampling, max_images=a.max_images, trust_remote_code=a.trust_remote_code)
    session = ChatSession(engine, a.system)
    for im in images:
        session.add_image(im)
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(f"mmit chat: {engine.name} ({engine.family or 'unknown family'}), "
          f"{'greedy' if sampling.greedy else f'temperature {sampling.temperature}, top-p {sampling.top_p}'}"
          f"{f', {sampling.num_beams} beams' if sampling.num_beams > 1 else ''}. {HELP}", file=out, flush=True)
    while True:
        try:
            if stdin is sys.stdin:
                line = input("USER: ")
            else:
                print("USER: ", end="", file=out, flush=True)
                line = stdin.readline()
                if not line:
                    raise EOFError
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        try:
            if line == "/reset":
                session.reset()
                print("(conversation reset)", file=out, flush=True)
                continue
            if line.startswith("/image"):
                path = line[len("/image"):].strip()
                if not path:
                    raise ValueError("usage: /image PATH")
                session.add_image(read_image(path))
                print(f"(image attached to your next message: {path})", file=out, flush=True)
                continue
            if line.startswith("/"):
                raise ValueError(f"unknown command {line.split()[0]!r}; {HELP}")
            print("ASSISTANT: ", end="", file=out, flush=True)
            try:
                for piece in session.ask(line):
                    print(piece, end="", file=out, flush=True)
            except KeyboardInterrupt:
                print("\n(interrupted; the exchange is not kept)", file=out, flush=True)
                continue
            print(file=out, flush=True)
            if a.stats:
                ans = session.last
                print(f"(prompt {ans.prompt_tokens} tokens, answer {len(ans.token_ids)} tokens)", file=out, flush=True)
        except (ValueError, OSError, SampleError) as e:
            print(f"\nerror: {e}", file=out, flush=True)
