"""Shared helpers of the chat / API / web demo tests (issue 15): the tiny LLaVA checkpoint, a real
uvicorn server on a free localhost port in a thread, a PNG of a demo image."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from conftest import DEMO_IMAGES, tiny_run_config

QUESTION = "What is in the image?"


_CKPT: dict = {}


def tiny_llava_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny LLaVA (seed 0) saved through ``save_checkpoint``; built once per test session
    (the chat, API and web demo tests share it)."""
    from mmit.families import get_family
    from mmit.training.checkpoint import save_checkpoint

    if "llava" not in _CKPT:
        tmp = tmp_path_factory.mktemp("serve-ckpt")
        cfg = tiny_run_config(tmp)
        fam = get_family("llava")
        torch.manual_seed(0)
        model, tokenizer = fam.build(cfg, torch.float32)
        _CKPT["llava"] = save_checkpoint(tmp / "ckpt", model=model, cfg=fam.checkpoint_config(cfg),
                                         tokenizer=tokenizer, trainer_state={"step": 0})
    return _CKPT["llava"]


def png_bytes(name: str = "dog_running.jpg", size=(64, 48)) -> bytes:
    """A demo image resized to ``size``, as PNG bytes (lossless, so every client sends the same pixels)."""
    im = Image.open(DEMO_IMAGES / name).convert("RGB").resize(size)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def serving(app):
    """Run ``app`` with uvicorn on 127.0.0.1 and a free port in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
