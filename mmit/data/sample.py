"""The one record type every source format is normalised into (docs/architecture.md, "Data").

A :class:`Sample` is what readers in ``mmit.data.sources`` yield, what ``mmit convert`` writes into a
shard's ``.json`` member (media bytes go in their own members), and what the collator turns into
token ids, labels and pixel tensors. Nothing downstream of a reader knows which dataset a sample
came from.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import orjson

from mmit.constants import IMAGE_PLACEHOLDER, MEDIA_KINDS, MEDIA_PLACEHOLDERS, ROLES

#: Deepest nesting of lists/objects allowed in :attr:`Sample.meta` (where a record's extra fields
#: go): deeper values break ``asdict``/``json.dumps``/``pickle`` with a ``RecursionError`` later on,
#: so :meth:`Sample.validate` refuses them as ``too-deep``.
MAX_META_DEPTH = 64

#: A lone UTF-16 surrogate: what an undecodable byte becomes under ``errors="surrogateescape"`` and
#: what a JSON ``"\\ud800"`` escape gives; such text cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")

#: The first characters of the media placeholders: text without them holds none.
_PLACEHOLDER_FIRST = "".join(sorted({ph[:1] for ph in MEDIA_PLACEHOLDERS.values()}))

_ROLE_SET = frozenset(ROLES)

_EMPTY_ANSWERS_ALLOWED: ContextVar[bool] = ContextVar("mmit_empty_answers_allowed", default=False)


@contextmanager
def allow_empty_answers(allowed: bool = True) -> Iterator[None]:
    """Within the block, :meth:`Sample.validate` calls that do not pass ``allow_empty_answers``
    use ``allowed`` (default outside any block: False, i.e. an empty answer is ``empty-answer``).

    For the code that runs readers on behalf of a config (``data.allow_empty_answers``): readers call
    ``validate()`` themselves, so the setting reaches them through this context (a ``ContextVar``:
    per thread / task; a lazy reader must be iterated inside the block)."""
    token = _EMPTY_ANSWERS_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _EMPTY_ANSWERS_ALLOWED.reset(token)


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (an undecodable byte kept by ``surrogateescape``, or
    a JSON ``\\udXXX`` escape without its pair). Such a string cannot be encoded as UTF-8."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def _meta_problem(value: Any, limit: int) -> Optional[str]:
    """``"too-deep"`` if ``value`` nests lists/dicts deeper than ``limit``, ``"bad-encoding"`` if a
    string (or dict key) in it holds a lone surrogate, else None. Iterative: never recurses."""
    strings = _nested_strings(value, limit)
    if strings is not None:  # every container within the limit: too-deep cannot happen
        return "bad-encoding" if has_lone_surrogate("".join(strings)) else None
    stack = [(value, 1)]  # the general walk (deep nesting, types other than JSON's)
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if has_lone_surrogate(v):
                return "bad-encoding"
            continue
        if isinstance(v, dict):
            items = list(v.keys()) + list(v.values())
        elif isinstance(v, (list, tuple)):
            items = v
        else:
            continue
        if depth > limit:
            return "too-deep"
        stack.extend((x, depth + 1) for x in items)
    return None


#: orjson options of :func:`_metas_plain`: subclasses of str/int/dict/list, dataclasses and dates
#: raise (as any other type orjson does not know) instead of being encoded.
_ORJSON_STRICT = (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
                  | orjson.OPT_PASSTHROUGH_DATETIME)


def _metas_plain(metas: List[Any]) -> bool:
    """True only when no value in ``metas`` can be ``bad-encoding`` or ``too-deep``: orjson encodes
    the list (it refuses a string holding a lone surrogate, a dict key that is not a string, and
    a subclass of str/int/dict/list) and its output holds at most ``MAX_META_DEPTH + 1`` opening
    brackets (one per list and dict, the outer list included: no meta can nest deeper than the
    number of its containers). False says nothing: the exact walk of :func:`_meta_problem` decides.
    ~4x cheaper than :func:`_strings_within`: one C pass, no Python-level list of every string."""
    try:
        blob = orjson.dumps(metas, option=_ORJSON_STRICT)
    except TypeError:  # orjson.JSONEncodeError
        return False
    return blob.count(b"[") + blob.count(b"{") <= MAX_META_DEPTH + 1


_CONTAINERS = frozenset([dict, list, tuple])
_JSON_TYPES = frozenset([str, int, float, bool, type(None), dict, list, tuple])


def _nested_strings(value: Any, limit: int) -> Optional[List[str]]:
    """Every string (dict keys included) in ``value``, a dict, list or tuple whose containers all
    lie within ``limit`` levels (``value`` itself is level 1) and whose items are all of the exact
    JSON types (str, int, float, bool, None, dict, list, tuple); None otherwise (the general walk
    of :func:`_meta_problem` then decides). One pass per level over all of its items, with the
    type tests done by ``map`` and set operations in C: metadata as readers build it (option
    lists, boxes, nested objects) is checked ~3x faster than item by item."""
    if type(value) not in _CONTAINERS:
        return None
    return _strings_within([value], limit)


def _strings_within(level: List[Any], limit: int) -> Optional[List[str]]:
    """:func:`_nested_strings` of every container in ``level`` (each at level 1)."""
    out: List[str] = []
    for _ in range(limit):
        items: List[Any] = []
        for v in level:
            if type(v) is dict:
                items += v
                items += v.values()
            else:
                items += v
        types = set(map(type, items))
        if not types <= _JSON_TYPES:
            return None  # a subclass or another type: the walk's isinstance rules apply
        if str in types:
            out += [x for x in items if type(x) is str]
        if types.isdisjoint(_CONTAINERS):
            return out
        level = [x for x in items if type(x) in _CONTAINERS]
    return None


class SampleError(ValueError):
    """A record that cannot be normalised. The message names the sample id (and file/line when
    known); ``reason`` is a short kebab-case key used for skip counts in ``_stats.json``."""

    def __init__(self, message: str, reason: str = "invalid-record"):
        super().__init__(message)
        self.reason = reason


@dataclass
class Media:
    """One media item.

    kind: one of ``image|video|audio|pointcloud``.
    path: where the bytes were found (the source's path, kept for provenance even after loading).
    data: the raw file bytes (encoded JPEG/PNG/MP4/WAV/NPY), or None until loaded.
    ext:  the real type sniffed from content (``jpg``, ``png``, ``webp``, ``gif``, ``mp4``, ...), or None.
    meta: free-form (original size, source-relative path, ...).
    """

    kind: str
    path: Optional[str] = None
    data: Optional[bytes] = field(default=None, repr=False)
    ext: Optional[str] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in MEDIA_KINDS:
            raise SampleError(f"unknown media kind {self.kind!r} (expected one of {MEDIA_KINDS})",
                              "bad-media-kind")


@dataclass
class Turn:
    """One conversation turn. ``role`` is ``system|user|assistant``; ``content`` is text in which each
    ``<image>`` stands for the next image of the sample's ``media`` (in order)."""

    role: str
    content: str


@dataclass
class Sample:
    """A normalised training / evaluation record.

    id:     unique within its source (string, never int: LLaVA ids such as ``000000033471`` keep zeros).
    media:  images (and later video/audio/point clouds) in the order their placeholders appear.
    turns:  optional leading ``system`` turn, then alternating ``user`` / ``assistant`` turns.
    task:   task name where the source has one (MultiInstruct, Vision-Flan, ...), else None.
    source: the format/dataset name (``llava``, ...).
    meta:   anything else the source carried (original record fields that matter downstream).
    """

    id: str
    turns: List[Turn]
    media: List[Media] = field(default_factory=list)
    task: Optional[str] = None
    source: Optional[str] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    # -- checks ---------------------------------------------------------------------------------
    def num_placeholders(self, placeholder: str = IMAGE_PLACEHOLDER) -> int:
        return sum(t.content.count(placeholder) for t in self.turns)

    def validate(self, allow_empty_answers: Optional[bool] = None) -> "Sample":
        """Check id, roles, placeholder counts, answers and text encoding. Returns self.

        Rules, each with the :class:`SampleError` reason it raises (the message names the id):

        * ``bad-id``: ``id`` is not a non-empty string.
        * ``no-turns``, ``bad-role``; ``roles-not-alternating``: at most one leading system turn,
          then user and assistant alternate starting with user.
        * ``<kind>-count-mismatch`` (``image-count-mismatch``, ...): for every media kind the number
          of its placeholders (:data:`mmit.constants.MEDIA_PLACEHOLDERS`: ``<image>``, ``<video>``,
          ``<audio>``, ``<pointcloud>``) equals the number of media items of that kind.
        * ``empty-answer``: an assistant turn that is empty or only whitespace (it would train the
          end-of-turn token alone), unless ``allow_empty_answers`` is True. ``None`` (default) takes
          the value set by :func:`allow_empty_answers` (False outside such a block).
        * ``bad-encoding``: a lone surrogate (an undecodable byte of the source, or a ``\\ud800``
          JSON escape) in the id, a turn, ``task``, ``source``, a media path or ``meta``.
        * ``too-deep``: ``meta`` nests lists/objects deeper than :data:`MAX_META_DEPTH`.
        """
        if not isinstance(self.id, str) or not self.id.strip():
            raise SampleError(f"sample id must be a non-empty string, got {self.id!r}", "bad-id")
        turns = self.turns
        if not turns:
            raise SampleError(f"sample {self.id!r}: no turns", "no-turns")
        roles = [t.role for t in turns]
        if not _ROLE_SET.issuperset(roles):
            i = next(i for i, r in enumerate(roles) if r not in ROLES)
            raise SampleError(f"sample {self.id!r}: turn {i} has unknown role {roles[i]!r}",
                              "bad-role")
        start = 1 if roles[0] == "system" else 0
        users, answers = roles[start::2], roles[start + 1::2]
        if users.count("user") != len(users) or answers.count("assistant") != len(answers):
            for i, r in enumerate(roles[start:]):
                want = "user" if i % 2 == 0 else "assistant"
                if r != want:
                    raise SampleError(
                        f"sample {self.id!r}: roles do not alternate: turn {i + start} "
                        f"is {r!r}, expected {want!r}", "roles-not-alternating")
        contents = [t.content for t in turns]
        text = "\x00".join(contents)  # no placeholder holds a NUL: none is formed across turns
        if self.media or any(c in text for c in _PLACEHOLDER_FIRST):
            kinds = [m.kind for m in self.media]
            for kind, ph in MEDIA_PLACEHOLDERS.items():
                n_media, n_ph = kinds.count(kind), text.count(ph)
                if n_ph != n_media:
                    raise SampleError(f"sample {self.id!r}: {n_ph} {ph} placeholder(s) but "
                                      f"{n_media} {kind}(s)", f"{kind}-count-mismatch")
        allowed = _EMPTY_ANSWERS_ALLOWED.get() if allow_empty_answers is None else allow_empty_answers
        if not allowed:
            for i in range(start + 1, len(turns), 2):
                if not contents[i].strip():
                    raise SampleError(f"sample {self.id!r}: turn {i} (assistant) is empty or only "
                                      "whitespace (it would train the end-of-turn token alone)",
                                      "empty-answer")
        self._check_text(text)
        return self

    def _check_text(self, turns_text: str) -> None:
        """Raise ``bad-encoding`` / ``too-deep`` (see :meth:`validate`). One joined scan in the usual
        case; ``turns_text`` is every turn's content joined."""
        media = self.media
        strings = [s for s in (self.id, self.task, self.source, turns_text) if isinstance(s, str)]
        strings += [m.path for m in media if isinstance(m.path, str)]
        n_text = len(strings)
        metas = [self.meta, *[m.meta for m in media]]
        if _metas_plain(metas) and not has_lone_surrogate("".join(strings)):
            return  # the usual case
        if all(type(meta) is dict for meta in metas):
            found = _strings_within(metas, MAX_META_DEPTH)  # one scan of all
        else:
            found = []
            for meta in metas:
                more = _nested_strings(meta, MAX_META_DEPTH) if meta else []
                if more is None:
                    found = None
                    break
                found += more
        # None: deeper than the limit, or not JSON types: the exact walk below decides
        if found is not None and not has_lone_surrogate("".join(strings + found)):
            return  # (a surrogate cannot be formed across a join)
        if has_lone_surrogate("".join(strings[:n_text])):
            texts = [("id", self.id), ("task", self.task), ("source", self.source)]
            texts += [(f"turn {i}", t.content) for i, t in enumerate(self.turns)]
            texts += [(f"media {i} path", m.path) for i, m in enumerate(media)]
            what = next(w for w, t in texts if isinstance(t, str) and has_lone_surrogate(t))
            raise SampleError(f"sample {self.id!r}: {what} holds an undecodable byte or a lone surrogate "
                              "(not valid UTF-8)", "bad-encoding")
        metas = [("meta", self.meta)] + [(f"media {i} meta", m.meta) for i, m in enumerate(media)]
        for what, meta in metas:
            problem = _meta_problem(meta, MAX_META_DEPTH) if meta else None
            if problem == "too-deep":
                raise SampleError(f"sample {self.id!r}: {what} is nested deeper than {MAX_META_DEPTH} levels",
                                  "too-deep")
            if problem == "bad-encoding":
                raise SampleError(f"sample {self.id!r}: {what} holds an undecodable byte or a lone surrogate "
                                  "(not valid UTF-8)", "bad-encoding")

    # -- (de)serialisation; media bytes are not part of the JSON -----------------------------------
    def to_json(self) -> Dict[str, Any]:
        """JSON-safe dict; media ``data`` is dropped (shards store it in separate members)."""
        d = asdict(self)
        for m in d["media"]:
            m.pop("data", None)
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any], media_data: Optional[List[Optional[bytes]]] = None) -> "Sample":
        media = [Media(**{k: v for k, v in m.items() if k != "data"}) for m in d.get("media", [])]
        if media_data is not None:
            for m, b in zip(media, media_data):
                m.data = b
        return cls(id=str(d["id"]), turns=[Turn(**t) for t in d["turns"]], media=media,
                   task=d.get("task"), source=d.get("source"), meta=d.get("meta") or {})
