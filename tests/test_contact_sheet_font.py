"""The contact sheet draws non-ASCII text (café, ☕) with real glyphs, and counts what no font has."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmit.data.inspect import TextPainter, contact_sheet, font_files
from mmit.data.sample import Sample, Turn

SIZE = 24


def _ink(draw_text) -> np.ndarray:
    """Boolean ink mask [H, W] of text drawn black on white by ``draw_text(draw)``."""
    im = Image.new("L", (160, 40), 255)
    draw_text(ImageDraw.Draw(im))
    return np.asarray(im) < 128


def test_accented_letter_is_the_letter_plus_an_accent_not_a_box():
    p = TextPainter(SIZE)
    cafe = _ink(lambda d: p.text(d, (4, 4), "cafe", 0))
    cafe_acute = _ink(lambda d: p.text(d, (4, 4), "café", 0))
    assert not p.missing
    diff = np.argwhere(cafe != cafe_acute)
    assert len(diff) >= 4  # the accent
    e_top = np.argwhere(cafe)[:, 0].min()  # top row of any ink in "cafe" (the f's ascender is higher)
    e_cols = diff[:, 1].min()
    # every differing pixel lies above the e's body: é is e + accent (a box would change the e's rows too)
    e_body_top = np.argwhere(cafe[:, e_cols:])[:, 0].min()
    assert diff[:, 0].max() < e_body_top and e_top <= e_body_top
    # Pillow's default font (what the sheet used before) has no é: its "café" differs from "cafe"
    # inside the e's own rows, i.e. it draws a box instead
    old = ImageFont.load_default(size=SIZE)
    o1 = _ink(lambda d: d.text((4, 4), "cafe", fill=0, font=old))
    o2 = _ink(lambda d: d.text((4, 4), "café", fill=0, font=old))
    body = np.argwhere(o1[:, np.argwhere(o1 != o2)[:, 1].min():])[:, 0].min()
    assert (np.argwhere(o1 != o2)[:, 0] >= body).any()


def test_cup_of_coffee_has_a_glyph_and_unknown_characters_are_counted(tmp_path, caplog):
    assert font_files()[0].endswith("DejaVuSans.ttf")
    p = TextPainter(SIZE)
    (piece, font), = p.runs("☕")
    assert piece == "☕" and font.path.endswith("DejaVuSans.ttf") and not p.missing
    nowhere = "\U0010FFFD"  # a private-use code point no font defines
    p.runs(f"a{nowhere}b{nowhere}")
    assert p.missing == {nowhere: 2}
    s = Sample(id="s1", turns=[Turn("user", f"Où est le café ☕ {nowhere}?"), Turn("assistant", "Là.")],
               media=[], task="t", source="x", meta={})
    with caplog.at_level(logging.WARNING, logger="mmit.inspect"):
        out = contact_sheet([s], str(tmp_path / "sheet.png"))
    assert Image.open(out).size[0] > 200
    warned = [r.getMessage() for r in caplog.records if "drawn as boxes" in r.getMessage()]
    assert len(warned) == 1 and "1 character(s)" in warned[0] and "U+10FFFD" in warned[0]
