"""The orjson route of ``mmit.data.sample_encoding`` (issue 17) must give :func:`dump_json`'s bytes
(``json``: sorted keys, compact, UTF-8) wherever it is taken, and step aside everywhere else."""

import collections
import dataclasses
import datetime
import enum
import math
import random
import struct
import uuid

import numpy as np
import pytest

from mmit.data.sample import Media, Sample, Turn
from mmit.data.sample_encoding import (SplitSampleJson, _plain_meta_json, dump_json, media_json,
                                       media_list_json, sample_json)


def _same_or_refused(value):
    """``_plain_meta_json(value)`` is either None or exactly ``dump_json(value)``; returns it."""
    fast = _plain_meta_json(value)
    if fast is not None:
        assert fast == dump_json(value), value
    return fast


def _floats():
    rng = random.Random(5)
    out = [0.0, -0.0, 1.0, -1.5, 0.1, 1e16, 1e15, 1e22, 1e-10, 5e-324, 2.2250738585072014e-308,
           1.7976931348623157e308, 123456789012345678.0, 0.0001, 0.00009999999999999999]
    for e in range(-325, 309):
        out += [10.0 ** e if e > -324 else 5e-324, rng.random() * 10.0 ** min(e, 307)]
    for edge in (1e-9, 1e-4):
        out += [edge, math.nextafter(edge, 0), math.nextafter(edge, 1)]
    for _ in range(20000):
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            out.append(x)
    return out


def test_floats_take_the_fast_route_only_where_both_encoders_agree():
    floats = _floats()
    fast = [x for x in floats if _same_or_refused({"x": x, "box": [x, -x]}) is not None]
    assert len(fast) > 0.9 * len(floats)  # most floats are not in [1e-9, 1e-4)
    for x in (1.5, 1e16, 1e-10, 0.001, -0.0, 5e-324):
        assert _plain_meta_json([x]) == dump_json([x])
    for x in (1e-5, 3.5e-6, 1e-9, -7.25e-7, 9.9e-5, math.nan, math.inf, -math.inf):
        assert _plain_meta_json([x]) is None  # orjson writes these differently from json


def test_every_code_point_escapes_alike():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(chars), 4096):
        text = "".join(chars[i:i + 4096])
        assert _plain_meta_json({text[:64]: text, "k": [text[::-1]]}) == \
            dump_json({text[:64]: text, "k": [text[::-1]]})
    keys = {"b": 1, "a": 2, "é": 3, "\U0001F600": 4, "\uffff": 5, "Z": 6, "": 7, "\x7f": 8}
    assert _plain_meta_json(keys) == dump_json(keys)  # sorted by code point, astral last


def test_ints_structures_and_types_json_writes_otherwise_are_refused():
    for n in (0, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1):
        assert _same_or_refused({"n": n, "b": True, "f": False}) is not None
    for n in (2 ** 64, -2 ** 63 - 1, 10 ** 30):
        assert _same_or_refused({"n": n}) is None
    nested = {"a": [[], {}, (1, "x"), [[[{"d": [1, 2.5]}]]]], "t": ()}
    assert _same_or_refused(nested) is not None

    class S(str):
        pass

    class I(int):
        pass

    class Colour(enum.IntEnum):
        RED = 1

    @dataclasses.dataclass
    class D:
        x: int = 1

    Pair = collections.namedtuple("Pair", "a b")
    others = [S("x"), I(3), Colour.RED, collections.OrderedDict(a=1), type("L", (list,), {})([1]),
               Pair(1, 2), D(), datetime.date(2026, 12, 2), np.float64(1.5), np.int64(2),
               np.zeros(2), b"bytes", {1, 2}, {1: "int key"}, "\ud800", {"\udc80": 1}, None,
               {"none": None}, "null", "0.00001 as text", "e-7 as text"]
    for value in others:
        try:
            dump_json({"v": value})
        except (TypeError, ValueError, UnicodeEncodeError):
            assert _plain_meta_json({"v": value}) is None, value  # json's own error decides
        else:
            _same_or_refused({"v": value})
    for value in (S("x"), I(3), type("L", (list,), {})([1]), "\ud800", None, "null",
                  "0.00001 as text", "e-7 as text"):
        assert _plain_meta_json({"v": value}) is None, value
    assert _plain_meta_json({"v": Colour.RED}) == b'{"v":1}' == dump_json({"v": Colour.RED})
    deep = "leaf"
    for _ in range(300):
        deep = [deep]
    assert _plain_meta_json(deep) is None  # past orjson's depth: json decides (and recurses)


def test_enum_and_uuid_are_written_where_json_refused_them():
    """The one documented difference: orjson encodes what ``json`` raises ``TypeError`` on."""

    class Colour(enum.Enum):
        RED = "red"

    u = uuid.UUID(int=7)
    for value, written in ((Colour.RED, b'"red"'), (u, b'"%s"' % str(u).encode())):
        with pytest.raises(TypeError):
            dump_json({"v": value})
        assert _plain_meta_json({"v": value}) == b'{"v":' + written + b"}"


def _samples():
    rng = random.Random(11)
    metas = [{}, {"options": ["no", "yes"], "boxes": [[0.5, 1.25, 3e-5, 4.0]], "template_id": 3},
             {"z": None}, {"n": math.nan}, {"k": S2("sub")}, {"meta": {"meta": ',"meta":'}},
             {"é": "ünï ✓", "t": (1, [2])}, {"x": 1e-7}]
    ids = ['plain', 'q"uote', ',"meta":{"x":1}', "ünï", "\\"]
    out = []
    for k in range(60):
        media = [Media("image", path=rng.choice([f"/x/{k}.jpg", None, "é/\"q\".png"]),
                       ext=rng.choice([None, "jpg"]), meta=dict(rng.choice(metas)))
                 for _ in range(k % 3)]
        turns = [Turn("user", "<image>\n" * len(media) + rng.choice(["hi", "null", "é\n\t\x00"])),
                 Turn("assistant", rng.choice(["ok", '"quoted"', "1e-7"]))]
        out.append(Sample(id=rng.choice(ids) + str(k), turns=turns, media=media,
                          task=rng.choice([None, "vqa"]), source=rng.choice([None, "src"]),
                          meta=dict(rng.choice(metas))))
    return out


class S2(str):
    pass


def test_split_and_media_lists_equal_encoding_the_sample_whole():
    fast = 0
    for s in _samples():
        whole = dump_json(sample_json(s))
        split = SplitSampleJson.of(s)
        assert split.head + media_list_json(s) + split.tail == whole == split.with_media(s)
        assert media_list_json(s) == dump_json(media_json(s))
        fast += _plain_meta_json(s.meta) is not None
        for m in s.media:  # what prepare_media adds between the digest and the shard member
            m.ext, m.meta["width"], m.meta["height"] = "png", 3, 4
        assert split.with_media(s) == dump_json(sample_json(s))
    assert fast > 10  # the orjson route was taken


def test_a_lone_surrogate_fails_as_json_fails():
    s = _samples()[0]
    s.turns[0].content += "\ud800"
    with pytest.raises(UnicodeEncodeError):
        dump_json(sample_json(s))
    with pytest.raises(UnicodeEncodeError):
        SplitSampleJson.of(s)
    s = _samples()[1]
    s.media = [Media("image", path="a\udcff.jpg")]
    with pytest.raises(UnicodeEncodeError):
        media_list_json(s)
