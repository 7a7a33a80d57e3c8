"""``Sample.validate`` was rewritten for speed (issue 17: it ran once per record and cost more than
a small image's tar write). The rewrite must raise the same reason with the same message, in the
same order of precedence, as the rules it replaced: checked here against that earlier code on
20,000 random samples built to break every rule, alone and together."""

import random

import pytest

from mmit.constants import MEDIA_PLACEHOLDERS, ROLES
from mmit.data.sample import (MAX_META_DEPTH, Media, Sample, SampleError, Turn, _meta_problem,
                              allow_empty_answers, has_lone_surrogate)


def _validate_before(self, allowed):
    """``Sample.validate`` (and ``_check_text``) as they were before the rewrite."""
    if not isinstance(self.id, str) or not self.id.strip():
        raise SampleError(f"sample id must be a non-empty string, got {self.id!r}", "bad-id")
    turns = self.turns
    if not turns:
        raise SampleError(f"sample {self.id!r}: no turns", "no-turns")
    for i, t in enumerate(turns):
        if t.role not in ROLES:
            raise SampleError(f"sample {self.id!r}: turn {i} has unknown role {t.role!r}", "bad-role")
    body = turns[1:] if turns[0].role == "system" else turns
    for i, t in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if t.role != want:
            raise SampleError(
                f"sample {self.id!r}: roles do not alternate: turn {i + len(turns) - len(body)} "
                f"is {t.role!r}, expected {want!r}", "roles-not-alternating")
    for kind, ph in MEDIA_PLACEHOLDERS.items():
        n_media = sum(1 for m in self.media if m.kind == kind)
        n_ph = sum(t.content.count(ph) for t in self.turns)
        if n_ph != n_media:
            raise SampleError(f"sample {self.id!r}: {n_ph} {ph} placeholder(s) but {n_media} {kind}(s)",
                              f"{kind}-count-mismatch")
    if not allowed:
        for i, t in enumerate(turns):
            if t.role == "assistant" and not t.content.strip():
                raise SampleError(f"sample {self.id!r}: turn {i} (assistant) is empty or only whitespace "
                                  "(it would train the end-of-turn token alone)", "empty-answer")
    texts = [("id", self.id), ("task", self.task), ("source", self.source)]
    texts += [(f"turn {i}", t.content) for i, t in enumerate(self.turns)]
    texts += [(f"media {i} path", m.path) for i, m in enumerate(self.media)]
    strings = [t for _, t in texts if isinstance(t, str)]
    if has_lone_surrogate("".join(strings)):
        what = next(w for w, t in texts if isinstance(t, str) and has_lone_surrogate(t))
        raise SampleError(f"sample {self.id!r}: {what} holds an undecodable byte or a lone surrogate "
                          "(not valid UTF-8)", "bad-encoding")
    metas = [("meta", self.meta)] + [(f"media {i} meta", m.meta) for i, m in enumerate(self.media)]
    for what, meta in metas:
        problem = _meta_problem(meta, MAX_META_DEPTH) if meta else None
        if problem == "too-deep":
            raise SampleError(f"sample {self.id!r}: {what} is nested deeper than {MAX_META_DEPTH} levels",
                              "too-deep")
        if problem == "bad-encoding":
            raise SampleError(f"sample {self.id!r}: {what} holds an undecodable byte or a lone surrogate "
                              "(not valid UTF-8)", "bad-encoding")


PIECES = ["", " ", "hi", "<image>", "<video>", "<audio>", "<pointcloud>", "<ima", "ge>", "\n",
          "\ud800", "é", "<", "\x00", "<image><image>"]


def _random_sample(rng: random.Random) -> Sample:
    n = rng.choice([0, 1, 2, 2, 3, 4, 5])
    roles = []
    for i in range(n):
        r = rng.random()
        if r < 0.08:
            roles.append(rng.choice(["system", "bot", "USER", ""]))
        else:
            roles.append(("user", "assistant")[i % 2] if rng.random() > 0.1 else
                         rng.choice(ROLES))
    if n and rng.random() < 0.3:
        roles[0] = "system"
    turns = [Turn(r, "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3)))) for r in roles]
    media = [Media(kind=rng.choice(["image", "image", "video", "audio", "pointcloud"]),
                   path=rng.choice([None, "a.jpg", "b\udcff.jpg"]),
                   meta=rng.choice([{}, {"w": 3}, {"x": ["\ud800"]}]))
             for _ in range(rng.choice([0, 0, 1, 1, 2]))]
    deep: object = "leaf"
    for _ in range(rng.choice([0, 2, MAX_META_DEPTH, MAX_META_DEPTH + 1])):
        deep = [deep]
    meta = rng.choice([{}, {"a": 1, "b": "x"}, {"deep": deep}, {"k\ud800": 1}, {"l": [{"m": "é"}]}])
    sid = rng.choice(["1", "id-é", "", "  ", 7, "x\udcff"])
    return Sample(id=sid, turns=turns, media=media, task=rng.choice([None, "t", "t\ud800"]),
                  source=rng.choice([None, "llava"]), meta=meta)


def _outcome(fn):
    try:
        fn()
        return "ok"
    except SampleError as e:
        return (e.reason, str(e))


@pytest.mark.parametrize("allowed", [False, True])
def test_validate_decides_and_words_as_before(allowed):
    rng = random.Random(17 + allowed)
    seen = set()
    for _ in range(10_000):
        s = _random_sample(rng)
        want = _outcome(lambda: _validate_before(s, allowed))
        assert _outcome(lambda: s.validate(allow_empty_answers=allowed)) == want, s
        with allow_empty_answers(allowed):
            assert _outcome(s.validate) == want
        seen.add(want if want == "ok" else want[0])
    # every rule was exercised, and so was passing
    assert {"ok", "bad-id", "no-turns", "bad-role", "roles-not-alternating", "image-count-mismatch",
            "bad-encoding", "too-deep"} <= seen
    assert ("empty-answer" in seen) != allowed


class _Str(str):
    pass


class _Dict(dict):
    """What a walk over ``keys()`` sees differs from the dict's own storage (which orjson reads)."""

    def keys(self):
        return ["k\ud800"]


def _nest(leaf, depth, kind=list):
    for _ in range(depth):
        leaf = kind([leaf]) if kind is not dict else {"k": leaf}
    return leaf


def _adversarial_metas():
    import enum
    import math

    class Colour(enum.Enum):
        BAD = "r\ud800"

    values = ["x", "\ud800", "é", "[[{{", 1, 1 << 70, -1.5, math.nan, math.inf, None, True,
              _Str("\udcff"), _Str("ok"), Colour.BAD, b"bytes", {1, 2}, ("t\udc80",), ()]
    for v in values:
        yield {"v": v}
        yield {"v": [v, {"w": v}]}
        yield {"v": _Dict(a=v)}
    yield {"\ud800": 1}
    yield {1: "x"}
    yield _Dict(k=1)
    for depth in (MAX_META_DEPTH - 2, MAX_META_DEPTH - 1, MAX_META_DEPTH, MAX_META_DEPTH + 1):
        for kind in (list, tuple, dict):
            yield {"d": _nest("leaf", depth, kind)}
            yield {"d": _nest("\ud800", depth, kind)}
    yield {"brackets": "[" * 100}  # brackets inside a string only make the check look further


def test_metas_plain_is_true_only_where_the_exact_walk_finds_nothing():
    """``_metas_plain`` (orjson's encoding as the usual-case check of ``_check_text``) may send any
    case to the exact walk, but must never pass one the walk would refuse; and it must pass the
    metadata readers build (else the fast path would be dead code)."""
    from mmit.data.sample import _metas_plain

    metas = list(_adversarial_metas())
    passed = 0
    for i, a in enumerate(metas):
        for group in ([a], [a, {}], [{}, a], [a, metas[(i * 7) % len(metas)]]):
            if _metas_plain(group):
                passed += 1
                assert all(_meta_problem(m, MAX_META_DEPTH) is None for m in group), group
    assert passed > 20
    plain = [{"options": ["no", "yes"], "boxes": [[1.5, 2.0, 3.25, 4.0]], "template_id": 1,
              "nested": {"a": [None, True, -0.0, 1e-7]}}, {"original_path": "./é/x.jpg"}]
    assert _metas_plain(plain)
    assert _metas_plain([_nest("leaf", MAX_META_DEPTH - 1)])  # 64 brackets with the outer list
    assert not _metas_plain([{"d": _nest("leaf", MAX_META_DEPTH)}])
