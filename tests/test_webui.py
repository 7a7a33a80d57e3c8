"""``mmit serve``'s web demo (issue 15) in a real headless browser: Debian's ``chromium`` driven by
playwright (never playwright's own browser download). The test uploads an image, asks a question,
reads the streamed answer from the page (it must equal the greedy answer of
:func:`mmit.inference.generate_turns`), asks a follow-up whose answer must be the one for the whole
history, and writes a screenshot under its tmp folder.

Skips when ``/usr/bin/chromium`` or playwright is missing, unless ``MMIT_REQUIRE_BROWSER=1`` (CI): then
it fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmit.data.sample import Turn
from serve_common import QUESTION, png_bytes, serving, tiny_llava_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_TOKENS = 12
FOLLOW_UP = "What color is it?"


def _need_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    for mod in ("gradio", "fastapi", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        why = "web demo test needs " + ", ".join(missing)
        if os.environ.get("MMIT_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (MMIT_REQUIRE_BROWSER=1)")
        pytest.skip(why)


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_web_demo_upload_ask_follow_up(tmp_path_factory, tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    from mmit.data.media import decode_image
    from mmit.inference import generate_turns
    from mmit.serve.app import build_app
    from mmit.serve.sampling import Sampling
    from mmit.serve.session import Engine

    engine = Engine.load(tiny_llava_checkpoint(tmp_path_factory), Sampling(max_new_tokens=MAX_TOKENS))
    img = tmp_path / "dog.png"
    img.write_bytes(png_bytes())
    pil = decode_image(img.read_bytes(), str(img))
    turns = [Turn("user", f"<image>\n{QUESTION}")]
    first = generate_turns(engine.model, engine.processor, turns, [pil], MAX_TOKENS).text
    turns += [Turn("assistant", first), Turn("user", FOLLOW_UP)]
    second = generate_turns(engine.model, engine.processor, turns, [pil], MAX_TOKENS).text
    assert _norm(first) and _norm(second) and _norm(first) != _norm(second)

    bot = '[data-testid="bot"] .message-content'
    wait_for = ("([sel, n, want]) => { const m = document.querySelectorAll(sel); return m.length === n && "
                "m[n - 1].innerText.split(/\\s+/).filter(Boolean).join(' ') === want; }")
    with serving(build_app(engine)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, timeout=60_000)
            page.set_input_files("#image input[type=file]", str(img))
            page.wait_for_selector("#image img", timeout=30_000)
            page.fill("#msg textarea", QUESTION)
            page.click("#send")
            page.wait_for_function(wait_for, arg=[bot, 1, _norm(first)], timeout=60_000)
            page.fill("#msg textarea", FOLLOW_UP)
            page.press("#msg textarea", "Enter")
            page.wait_for_function(wait_for, arg=[bot, 2, _norm(second)], timeout=60_000)
            shot = tmp_path / "web_demo.png"
            page.screenshot(path=str(shot), full_page=True)
            answers = [_norm(t) for t in page.locator(bot).all_inner_texts()]
            users = [_norm(t) for t in page.locator('[data-testid="user"] .message-content').all_inner_texts()]
        finally:
            browser.close()
    assert answers == [_norm(first), _norm(second)]
    assert users == [f"[image] {QUESTION}", FOLLOW_UP]
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_browser_skips_unless_required(monkeypatch, tmp_path):
    import test_webui

    monkeypatch.setattr(test_webui, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("MMIT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        _need_browser()
    monkeypatch.setenv("MMIT_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="MMIT_REQUIRE_BROWSER=1"):
        _need_browser()
