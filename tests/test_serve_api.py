"""``mmit serve``'s OpenAI-compatible API (issue 15), through a real uvicorn server on localhost and an
HTTP client: ``/v1/models``; ``/v1/chat/completions`` plain and streamed (server-sent events), whose
greedy text equals :func:`mmit.inference.generate_turns` on the same conversation; multi-turn history;
malformed requests answered 4xx with an OpenAI-style message while the server keeps serving; one
generation at a time. The web demo is mounted on the same port (``/``)."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest

from mmit.data.sample import Turn
from serve_common import QUESTION, png_bytes, serving, tiny_llava_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from mmit.serve.sampling import Sampling
    from mmit.serve.session import Engine

    return Engine.load(tiny_llava_checkpoint(tmp_path_factory), Sampling(max_new_tokens=MAX_TOKENS), max_images=2)


@pytest.fixture(scope="module")
def url(engine):
    from mmit.serve.app import build_app

    with serving(build_app(engine, web=True, max_body_bytes=1 << 20)) as base:
        yield base


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(text=QUESTION, *images):
    parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def expected(engine, turns, n_images=1):
    """The greedy answer of :func:`generate_turns` to ``turns`` with the PNG decoded as the server does."""
    from mmit.data.media import decode_image
    from mmit.inference import generate_turns

    images = [decode_image(png_bytes(), "test")] * n_images
    return generate_turns(engine.model, engine.processor, turns, images, MAX_TOKENS)


def sse(client, url, body):
    """``(content pieces, chunks)`` of a streamed completion; asserts the SSE framing and ``[DONE]``."""
    pieces, chunks = [], []
    with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines), lines
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        chunk = json.loads(ln[len("data: "):])
        chunks.append(chunk)
        for ch in chunk["choices"]:
            pieces.append(ch["delta"].get("content") or "")
    return pieces, chunks


def test_models_and_web_demo_on_one_port(url, engine):
    r = httpx.get(f"{url}/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [engine.name] == ["ckpt"]
    page = httpx.get(f"{url}/", follow_redirects=True)
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_plain_and_streamed_answers_equal_generate(url, engine):
    want = expected(engine, [Turn("user", f"<image>\n{QUESTION}")])
    assert want.text, "the tiny model should say something for this prompt (greedy)"
    body = {"model": "whatever", "messages": [user(QUESTION, png_bytes())], "max_tokens": MAX_TOKENS,
            "temperature": 0}
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["model"] == "whatever"
        msg = out["choices"][0]["message"]
        assert msg == {"role": "assistant", "content": want.text}
        assert out["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": len(want.token_ids),
                                "total_tokens": want.prompt_tokens + len(want.token_ids)}
        assert out["choices"][0]["finish_reason"] == ("length" if len(want.token_ids) == MAX_TOKENS else "stop")

        pieces, chunks = sse(client, url, {**body, "stream_options": {"include_usage": True}})
    assert "".join(pieces) == want.text
    assert len([p for p in pieces if p]) > 1, "the answer should arrive in several pieces"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == out["usage"] and len({c["id"] for c in chunks}) == 1


def test_history_is_rendered(url, engine):
    """A second user turn after an answer: the prompt holds the whole history (longer, and the text
    equals generate_turns on the same three turns)."""
    first = expected(engine, [Turn("user", f"<image>\n{QUESTION}")])
    turns = [Turn("user", f"<image>\n{QUESTION}"), Turn("assistant", first.text), Turn("user", "What color is it?")]
    want = expected(engine, turns)
    body = {"messages": [user(QUESTION, png_bytes()), {"role": "assistant", "content": first.text},
                         {"role": "user", "content": "What color is it?"}]}
    out = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert out["choices"][0]["message"]["content"] == want.text
    assert out["usage"]["prompt_tokens"] == want.prompt_tokens > first.prompt_tokens + len(first.token_ids)


def test_seeded_sampling_is_reproducible(url):
    body = {"messages": [user(QUESTION, png_bytes())], "temperature": 1.5, "top_p": 0.9, "seed": 3}
    a, b = (httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json() for _ in range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


BAD_REQUESTS = {
    "malformed JSON": (b'{"messages": [', 400, "not valid JSON"),
    "missing messages": (json.dumps({"model": "x"}).encode(), 400, "messages"),
    "bad role": (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "role"),
    "undecodable image": (json.dumps({"messages": [user(QUESTION, b"not a png at all")]}).encode(), 400, "image"),
    "bad base64": (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}).encode(), 400, "base64"),
    "remote URL": (json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]}]}).encode(), 400, "data: URL"),
    "too many images": (json.dumps({"messages": [user(QUESTION, *[png_bytes()] * 3)]}).encode(), 400, "at most 2"),
    "last turn not user": (json.dumps({"messages": [user(), {"role": "assistant", "content": "x"}]}).encode(), 400,
                           "end with a user"),
    "temperature out of range": (json.dumps({"messages": [user()], "temperature": -1}).encode(), 400, "temperature"),
    "body over the limit": (json.dumps({"messages": [user("x" * (1 << 20))]}).encode(), 413, "over the limit"),
}


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(url, engine):
    with httpx.Client(timeout=60) as client:
        for name, (raw, status, words) in BAD_REQUESTS.items():
            r = client.post(f"{url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text)
            err = r.json()["error"]
            assert words in err["message"] and err["type"] == "invalid_request_error", (name, err)
        want = expected(engine, [Turn("user", f"<image>\n{QUESTION}")])
        r = client.post(f"{url}/v1/chat/completions", json={"messages": [user(QUESTION, png_bytes())]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want.text


def test_one_generation_at_a_time(url, engine, monkeypatch):
    """Three requests at once: the model never runs two generations together, all three answer."""
    real = engine.model.generate_tokens
    running, most = [0], [0]
    guard = threading.Lock()

    def spy(*args, **kwargs):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)
            return real(*args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(engine.model, "generate_tokens", spy)
    results = []

    def ask(stream):
        body = {"messages": [user("Describe it.", png_bytes())], "max_tokens": 4}
        with httpx.Client(timeout=60) as c:
            if stream:
                results.append("".join(sse(c, url, body)[0]))
            else:
                out = c.post(f"{url}/v1/chat/completions", json=body).json()
                results.append(out["choices"][0]["message"]["content"])

    threads = [threading.Thread(target=ask, args=(s,)) for s in (False, True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 1 and len(results) == 3 and len(set(results)) == 1


def test_a_client_that_goes_away_cancels_its_generation(url, engine, monkeypatch):
    """A streamed request for 900 tokens whose client disconnects after the first pieces: the
    generation stops early (the lock is free for the next request, which answers normally)."""
    real = engine.model.generate_tokens
    lengths = []

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        lengths.append(out.shape[1])
        return out

    monkeypatch.setattr(engine.model, "generate_tokens", spy)
    body = {"messages": [user(QUESTION, png_bytes())], "max_tokens": 900, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk, then close mid-stream
        r = client.post(f"{url}/v1/chat/completions", json={"messages": [user(QUESTION, png_bytes())]})
    assert r.status_code == 200 and len(lengths) == 2
    assert lengths[0] < 900, "the abandoned generation ran to the end"


def test_mmit_serve_command_wires_both_faces(tmp_path_factory, monkeypatch, capsys):
    """``mmit serve`` (flags -> checkpoint -> app -> uvicorn.run): the app it hands to uvicorn serves
    the API and the web demo; bad flags exit 2 before anything loads."""
    import uvicorn

    from mmit.cli import main as cli

    ckpt = tiny_llava_checkpoint(tmp_path_factory)
    got = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: got.update(app=app, host=host, port=port))
    assert cli(["serve", "--checkpoint", str(ckpt), "--port", "8123", "--model-name", "tiny",
                "--max-new-tokens", "5"]) == 0
    assert (got["host"], got["port"]) == ("127.0.0.1", 8123) and "http://127.0.0.1:8123/" in capsys.readouterr().out
    with serving(got["app"]) as base:
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == "tiny"
        out = httpx.post(f"{base}/v1/chat/completions", json={"messages": [user(QUESTION, png_bytes())]},
                         timeout=60).json()
        assert 0 < out["usage"]["completion_tokens"] <= 5  # the --max-new-tokens default applies
        assert "gradio" in httpx.get(f"{base}/", follow_redirects=True).text.lower()
    assert cli(["serve", "--checkpoint", str(ckpt), "--top-p", "0"]) == 2
    assert "top_p must be" in capsys.readouterr().err


def test_mmit_serve_without_the_extra_names_it(monkeypatch, capsys, tmp_path):
    import sys

    from mmit.cli import main as cli

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert cli(["serve", "--checkpoint", str(tmp_path)]) == 2
    assert "pip install 'mmit[serve]'" in capsys.readouterr().err
