"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models`` (FastAPI).

Request (the OpenAI Chat Completions shape): ``messages`` (``role`` system / user / assistant;
``content`` a string or a list of parts ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``), and optionally
``max_tokens`` / ``max_completion_tokens``, ``temperature`` (0: greedy), ``top_p``, ``seed``, ``n``
(1 only), ``stream``, ``stream_options.include_usage``, and mmit's ``num_beams``. Unset fields take the
server's defaults (``mmit serve`` flags; greedy unless told otherwise). ``model`` is echoed, not
checked. Other OpenAI fields are ignored.

Images come only as ``data:`` URLs (base64): the server never fetches a remote URL. A user message's
images go in front of its text unless the text has one ``<image>`` marker per image.

Response: ``chat.completion`` JSON with ``usage`` (prompt tokens, media tokens included; completion
tokens), or with ``stream: true`` server-sent events ``data: {chat.completion.chunk}`` ... ``data:
[DONE]``; the streamed pieces join to the same text as the plain answer.

Errors: 4xx with ``{"error": {"message", "type", "param", "code"}}`` (malformed JSON, a bad field,
an undecodable image, a remote URL, too many images, a prompt over the context); 413 for a body over
``max_body_bytes``; 500 (plain) or an ``error`` event (streaming) when the generation itself fails.
One generation runs at a time (:attr:`~mmit.serve.session.Engine.lock`).
"""
# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations.

import base64
import binascii
import json
import re
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from mmit.data.sample import SampleError, Turn
from mmit.serve.sampling import Sampling

#: Default cap on a request body (bytes): a few base64 images.
MAX_BODY_BYTES = 32 * 1024 * 1024
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+(=[\w.+-]+)?)*),(?P<data>.*)$", re.S)


class APIError(Exception):
    """An error answered as OpenAI does: HTTP ``status`` and ``{"error": {...}}``."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.message, self.status, self.param, self.type, self.code = message, status, param, type, code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def decode_data_url(url: Any, where: str):
    """The RGB PIL image of a ``data:image/...;base64,...`` URL. Raises :class:`APIError` for another
    scheme (no remote fetches), a non-base64 or undecodable payload."""
    from mmit.data.media import decode_image

    if not isinstance(url, str):
        raise APIError(f"{where}: image_url.url must be a string", param=where)
    m = _DATA_URL.match(url)
    if m is None:
        scheme = url.split(":", 1)[0][:20] if ":" in url else "no scheme"
        raise APIError(f"{where}: only data: URLs (data:image/png;base64,...) are accepted, not {scheme!r}; "
                       "this server fetches no remote images", param=where, code="unsupported_url")
    if ";base64" not in m.group("params"):
        raise APIError(f"{where}: the data: URL must be base64 encoded (;base64,)", param=where)
    try:
        data = base64.b64decode(m.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(f"{where}: the data: URL's payload is not valid base64", param=where) from None
    try:
        return decode_image(data, where)
    except SampleError as e:
        raise APIError(str(e), param=where, code=e.reason) from None


def parse_messages(messages: Any) -> Tuple[List[Turn], List[Any]]:
    """``(turns, images)`` of an OpenAI ``messages`` list (module docstring). Raises :class:`APIError`
    naming the message and part at fault."""
    from mmit.inference import with_placeholders

    if not isinstance(messages, list) or not messages:
        raise APIError("'messages' must be a non-empty list", param="messages")
    turns, images = [], []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise APIError(f"{where} must be an object", param=where)
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise APIError(f"{where}.role must be system, user or assistant, got {role!r}", param=f"{where}.role")
        texts, mine = [], []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                pw = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    if role != "user":
                        raise APIError(f"{pw}: images are only accepted in user messages", param=pw)
                    iu = part.get("image_url")
                    mine.append(decode_data_url(iu.get("url") if isinstance(iu, dict) else iu, pw))
                else:
                    raise APIError(f"{pw} must be {{'type': 'text', 'text': str}} or {{'type': 'image_url', "
                                   f"'image_url': {{'url': 'data:...'}}}}", param=pw)
        elif content is None and role == "assistant":
            pass
        else:
            raise APIError(f"{where}.content must be a string or a list of content parts", param=f"{where}.content")
        text = "\n".join(texts)
        try:
            text = with_placeholders(text, {"image": len(mine)})
        except ValueError as e:
            raise APIError(f"{where}: {e}", param=where) from None
        turns.append(Turn(role, text))
        images.extend(mine)
    return turns, images


def parse_sampling(body: Dict[str, Any], default: Sampling) -> Sampling:
    """The request's decoding settings over ``default``. Raises :class:`APIError` for a value out of
    range (the field named), ``n`` != 1 or ``stop`` (not supported)."""
    if body.get("n", 1) not in (1, None):
        raise APIError("only n=1 is supported", param="n")
    if body.get("stop") not in (None, [], ""):
        raise APIError("'stop' is not supported (the model's own stop tokens apply)", param="stop")
    fields = {"max_new_tokens": body.get("max_completion_tokens", body.get("max_tokens")),
              "temperature": body.get("temperature"), "top_p": body.get("top_p"), "seed": body.get("seed"),
              "num_beams": body.get("num_beams")}
    try:
        return default.replace(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        raise APIError(str(e).replace("max_new_tokens", "max_tokens"), param=name) from None


def finish_reason(answer, sampling: Sampling, stop_ids) -> str:
    """``length`` when the answer used all ``max_new_tokens`` without ending on a stop token, else ``stop``."""
    ids = answer.token_ids
    return "length" if len(ids) >= sampling.max_new_tokens and ids[-1] not in set(stop_ids) else "stop"


def _chunk(cid: str, created: int, model: str, delta: Dict[str, Any], finish: Optional[str] = None,
           usage: Optional[Dict[str, int]] = None) -> str:
    out: Dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"


def _usage(answer) -> Dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": len(answer.token_ids),
            "total_tokens": answer.prompt_tokens + len(answer.token_ids)}


def add_routes(app, engine, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Add ``/v1/models`` and ``/v1/chat/completions`` for ``engine`` (a
    :class:`~mmit.serve.session.Engine`) to the FastAPI ``app``, and the OpenAI error format for
    :class:`APIError`."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "mmit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            raise APIError(f"request body of {size} bytes is over the limit of {max_body_bytes}", status=413)
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise APIError(f"request body of {len(raw)} bytes is over the limit of {max_body_bytes}", status=413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        if "messages" not in body:
            raise APIError("missing required field 'messages'", param="messages")
        sampling = parse_sampling(body, engine.sampling)
        turns, images = await run_in_threadpool(parse_messages, body["messages"])
        try:
            stream = await run_in_threadpool(engine.stream, turns, images, sampling)
        except (ValueError, SampleError) as e:
            raise APIError(str(e), param="messages") from None
        stop_ids = engine.processor.stop_token_ids()
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = body.get("model") if isinstance(body.get("model"), str) else engine.name
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_events(stream, cid, created, model, sampling, include_usage,
                                             stop_ids),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            text = "".join(await run_in_threadpool(list, stream))
        except Exception as e:  # the generation failed: the server stays up
            raise APIError(f"generation failed: {type(e).__name__}: {e}", status=500, type="server_error") from None
        answer = stream.answer
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason(answer, sampling, stop_ids)}],
                "usage": _usage(answer)}


async def _events(stream, cid: str, created: int, model: str, sampling: Sampling, include_usage: bool, stop_ids):
    """Server-sent events of an :class:`~mmit.inference.AnswerStream`; a client that goes away cancels
    the generation (the ``finally``)."""
    from starlette.concurrency import run_in_threadpool

    pieces = iter(stream)
    done = object()
    try:
        yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
        while True:
            try:
                piece = await run_in_threadpool(next, pieces, done)
            except Exception as e:  # headers are sent: report in the stream
                err = APIError(f"generation failed: {type(e).__name__}: {e}", status=500, type="server_error")
                yield f"data: {json.dumps(err.body())}\n\n"
                break
            if piece is done:
                answer = stream.answer
                yield _chunk(cid, created, model, {}, finish_reason(answer, sampling, stop_ids))
                if include_usage:
                    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": _usage(answer)}
                    yield f"data: {json.dumps(out)}\n\n"
                break
            yield _chunk(cid, created, model, {"content": piece})
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()
