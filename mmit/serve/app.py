"""``mmit serve``: one port, two faces: the gradio web demo at ``/`` (:mod:`mmit.serve.webui`) and the
OpenAI-compatible API under ``/v1`` (:mod:`mmit.serve.openai_api`), one FastAPI app run by uvicorn.
Both share one loaded model and its lock (one generation at a time).

Needs the ``[serve]`` extra (fastapi, uvicorn, gradio).
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from mmit.serve.sampling import add_checkpoint_args, add_sampling_args, sampling_from_args


def build_app(engine, *, web: bool = True, system: Optional[str] = None, max_body_bytes: Optional[int] = None):
    """The FastAPI app: the ``/v1`` routes, and the web demo mounted at ``/`` unless ``web`` is False."""
    from fastapi import FastAPI

    from mmit.serve.openai_api import MAX_BODY_BYTES, add_routes

    app = FastAPI(title="mmit", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    add_routes(app, engine, max_body_bytes or MAX_BODY_BYTES)
    if web:
        import gradio as gr

        from mmit.serve.webui import build_demo

        app = gr.mount_gradio_app(app, build_demo(engine, system), path="/")
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmit serve",
                                description="Serve a checkpoint: a web demo at / and an OpenAI-compatible API at "
                                            "/v1/chat/completions, on one port.")
    add_checkpoint_args(p, "system message of every web demo conversation")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the name /v1/models reports (default: the folder's name)")
    p.add_argument("--no-web", action="store_true", help="serve the API only")
    add_sampling_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Load the checkpoint and serve until interrupted. Raises ``ValueError`` for bad flags,
    ``FileNotFoundError`` for a missing checkpoint, :class:`~mmit.extras.MissingExtraError` naming the
    ``serve`` extra when fastapi, uvicorn or gradio are missing."""
    a = parser().parse_args(argv)
    sampling = sampling_from_args(a)
    from mmit.extras import require

    for module in ("fastapi", "uvicorn") + (() if a.no_web else ("gradio",)):
        require(module, "mmit serve")  # MissingExtraError naming pip install 'mmit[serve]'
    import uvicorn

    from mmit.serve.session import Engine

    engine = Engine.load(a.checkpoint, sampling, name=a.model_name, max_images=a.max_images,
                         trust_remote_code=a.trust_remote_code)
    app = build_app(engine, web=not a.no_web, system=a.system)
    print(f"mmit serve: {engine.name} ({engine.family}) on http://{a.host}:{a.port}/  "
          f"(web demo at /, OpenAI API at /v1/chat/completions)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0
