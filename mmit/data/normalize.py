"""Reusable normalisation rules for conversation-style records (LLaVA and its many descendants).

Every reader that sees ``[{"from": "human"|"gpt", "value": ...}]`` or ``[{"role", "content"}]`` turns
(LLaVA, ShareGPT4V, LAMM, Vision-Flan, ...) uses these helpers so that they all produce the same
:class:`~mmit.data.sample.Sample` text:

* :func:`normalize_role` / :func:`normalize_turns`: ``human|user`` → ``user``, ``gpt|assistant`` →
  ``assistant``, ``system`` → ``system`` (case-insensitive); anything else is an error.
* :func:`check_first_turn`: a leading turn that is neither ``user`` nor ``system`` is an error.
  (LLaVA's ``preprocess`` silently drops it, arXiv 2304.08485 code @ c121f04; we refuse instead,
  because the drop shifts every later turn's role.)
* :func:`place_image_placeholders`: LLaVA ``preprocess_multimodal`` rule — with one image, the
  ``<image>`` placeholder is removed from wherever it sits in its turn and re-inserted at the start as
  ``"<image>\\n{text}"``; an image record without any placeholder gets them prepended to the first
  user turn. :func:`add_media_placeholders` does the same for ``<video>``, ``<audio>`` and
  ``<pointcloud>`` (:data:`MEDIA_PLACEHOLDERS`). Several images per record keep their written
  positions; text-only records (no media) are left as they are.
* Finding and loading the media a record names (base64, paths, content checks): :mod:`mmit.data.media_resolve`.
* :func:`apply_policy`: the ``missing="skip"|"error"`` policy every reader uses: under ``skip`` a
  record that fails (missing media, malformed, invalid) is counted by reason in a
  :class:`~mmit.data.stats.SkipCounter`; under ``error`` a :class:`SampleError` names file and record.
* Ids: :func:`scalar_id` (a string or integer, else ``bad-id``) and :class:`IdSet` /
  :func:`unique_samples` (a second record with an id already yielded is ``duplicate-id``; the first
  one is kept; :func:`allow_duplicate_ids` turns this off for sources whose ids are image ids). A record the file reader could not read (:class:`~mmit.data.record_io.BadRecord`:
  ``too-deep``, ``bad-encoding``, ...) is counted under its reason by :func:`record_identity` and
  :func:`apply_policy`.
* Special-token policy, data side: a media placeholder written inside an assistant turn of
  conversation data is refused (``special-token-in-text``), since only user turns carry media; the
  tokenizer side (``</s>``, ``<|im_end|>``, ...) is :func:`mmit.templates.labels.check_data_text`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

from mmit.constants import IMAGE_PLACEHOLDER, MEDIA_PLACEHOLDERS
from mmit.data.record_io import BadRecord
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.stats import SkipCounter

#: Role spellings seen in the wild → normalised role (keys are lower-case). ``human``/``gpt``:
#: LLaVA, ShareGPT4V, LAMM, Vision-Flan; ``user``/``assistant``/``system``: OpenAI / HF chat
#: templates; ``model``: Gemini-style chat logs; ``chatgpt``/``bard``/``bing``: raw ShareGPT dumps,
#: which FastChat's ``clean_sharegpt`` maps to ``gpt``.
ROLE_ALIASES: Dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}


def normalize_role(role: Any, where: str) -> str:
    """Map a source role name to ``system|user|assistant``.

    Raises :class:`SampleError` (reason ``bad-role``) naming ``where`` for anything not in
    :data:`ROLE_ALIASES`.
    """
    if isinstance(role, str):
        found = ROLE_ALIASES.get(role) or ROLE_ALIASES.get(role.strip().lower())
        if found:
            return found
    raise SampleError(f"{where}: unknown role {role!r} (expected one of "
                      f"{', '.join(sorted(ROLE_ALIASES))})", "bad-role")


def normalize_turns(conversations: Any, where: str) -> List[Turn]:
    """Turn a source conversation list into :class:`Turn` objects.

    Each item is ``{"from": role, "value": text}`` (LLaVA) or ``{"role": role, "content": text}``
    (OpenAI / HF chat style). Text must be a string. Raises :class:`SampleError` naming ``where``:
    ``invalid-record`` for a non-list / non-object / missing or non-string field, ``bad-role`` for an
    unknown role, ``no-turns`` for an empty list, ``special-token-in-text`` for a media placeholder
    (``<image>``, ``<video>``, ...) inside an assistant turn: it would stand for no media item, or
    silently become the record's image when the user turn has none.
    """
    if not isinstance(conversations, list):
        raise SampleError(f"{where}: 'conversations' must be a list, got "
                          f"{type(conversations).__name__}", "invalid-record")
    if not conversations:
        raise SampleError(f"{where}: empty 'conversations'", "no-turns")
    turns: List[Turn] = []
    for i, item in enumerate(conversations):
        if not isinstance(item, dict):
            raise SampleError(f"{where}: turn {i} is not an object", "invalid-record")
        if "from" in item or "value" in item:
            role, text = item.get("from"), item.get("value")
        elif "role" in item or "content" in item:
            role, text = item.get("role"), item.get("content")
        else:
            raise SampleError(f"{where}: turn {i} has neither from/value nor role/content keys "
                              f"(keys: {sorted(item)})", "invalid-record")
        if not isinstance(text, str):
            raise SampleError(f"{where}: turn {i} text must be a string, got {type(text).__name__}",
                              "invalid-record")
        role = normalize_role(role, f"{where}: turn {i}")
        if role == "assistant" and "<" in text:
            found = [ph for ph in MEDIA_PLACEHOLDERS.values() if ph in text]
            if found:
                raise SampleError(f"{where}: turn {i} (assistant) holds {found[0]!r}: media placeholders "
                                  "belong in user turns; in an answer it is text that would become a media "
                                  "token", "special-token-in-text")
        turns.append(Turn(role=role, content=text))
    return turns


def check_first_turn(turns: Sequence[Turn], where: str) -> None:
    """Raise :class:`SampleError` (reason ``first-turn-not-user``) if the first turn is neither
    ``user`` nor ``system``. LLaVA would drop such a turn silently; we refuse."""
    if turns and turns[0].role not in ("user", "system"):
        raise SampleError(f"{where}: first turn is {turns[0].role!r}; a conversation must start "
                          f"with a user (or system) turn", "first-turn-not-user")


def move_placeholder_to_front(text: str, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """LLaVA ``preprocess_multimodal``: remove ``placeholder`` and put it first, then a newline.

    ``"Where is the cat?\\n<image>"`` → ``"<image>\\nWhere is the cat?"``. The remaining text is
    stripped, as LLaVA does.
    """
    rest = text.replace(placeholder, "").strip()
    return f"{placeholder}\n{rest}".strip()


def place_image_placeholders(turns: List[Turn], n_images: int,
                             placeholder: str = IMAGE_PLACEHOLDER) -> List[Turn]:
    """Apply the placeholder rules for a record with ``n_images`` images; returns new turns.

    * ``n_images == 0``: unchanged (text-only; a stray placeholder is left for
      :meth:`Sample.validate` to report as ``image-count-mismatch``).
    * No placeholder anywhere and ``n_images > 0``: prepend ``n_images`` placeholders, each followed
      by ``\\n``, to the first user turn.
    * ``n_images == 1`` and exactly one placeholder, in a user turn: move it to the start of that
      turn (:func:`move_placeholder_to_front`). LLaVA only ever writes it in the first user turn.
    * Several images with placeholders: positions are kept as written (interleaved documents).

    Any other combination is left for :meth:`Sample.validate` to reject.
    """
    if n_images <= 0:
        return list(turns)
    out = [Turn(t.role, t.content) for t in turns]
    counts = [t.content.count(placeholder) for t in out]
    if not any(counts):  # the usual case: prepend them to the first user turn
        for i, t in enumerate(out):
            if t.role == "user":
                out[i] = Turn("user", f"{placeholder}\n" * n_images + t.content.strip())
                break
        return out
    if n_images == 1 and sum(counts) == 1:
        i = counts.index(1)
        if out[i].role == "user":
            out[i] = Turn("user", move_placeholder_to_front(out[i].content, placeholder))
    return out


def record_extras(record: Mapping[str, Any], used: Sequence[str]) -> Dict[str, Any]:
    """The record's fields other than ``used``, to keep in :attr:`Sample.meta` (JSON-safe as read)."""
    return {k: v for k, v in record.items() if k not in used}


# -- placeholders for the other media kinds --------------------------------------------------------

# MEDIA_PLACEHOLDERS (mmit.constants) is the one table: ``<image>`` is LLaVA's; the others follow the
# same spelling so one rule (:func:`place_image_placeholders` with ``placeholder=``) places them all.


def add_media_placeholders(turns: List[Turn], media: Sequence[Media]) -> List[Turn]:
    """Place one placeholder per media item, kind by kind (:data:`MEDIA_PLACEHOLDERS`).

    Images follow :func:`place_image_placeholders` (LLaVA's rule). For every other kind, records
    whose text holds none of its placeholder get them prepended to the first user turn, after
    any image placeholders (LAMM's 3D JSON has none: its model inserts the point-cloud tokens
    itself, arXiv 2306.06687). Returns new turns.
    """
    out = place_image_placeholders(turns, sum(1 for m in media if m.kind == "image"))
    for kind, ph in MEDIA_PLACEHOLDERS.items():
        n = sum(1 for m in media if m.kind == kind)
        if kind == "image" or n == 0 or any(ph in t.content for t in out):
            continue
        for i, t in enumerate(out):
            if t.role == "user":
                head = ""
                while t.content[len(head):].startswith(f"{IMAGE_PLACEHOLDER}\n"):
                    head += f"{IMAGE_PLACEHOLDER}\n"
                out[i] = Turn("user", head + f"{ph}\n" * n + t.content[len(head):].strip())
                break
    return out


# -- the skip / error policy --------------------------------------------------------------------------

MISSING_POLICIES = ("skip", "error")


def scalar_id(value: Any, where: str) -> str:
    """A record's id as a string: a string (kept as written, so ``000000033471`` keeps its zeros)
    or an integer. Raises :class:`SampleError` ``bad-id`` naming ``where`` for anything else
    (objects, lists, floats, booleans, null) and for an empty or blank string: ``str()`` of an
    object id would give ids such as ``"{'a': 1}"``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SampleError(f"{where}: id must be a string or an integer, got "
                          f"{type(value).__name__} {_short(value)}", "bad-id")
    sid = str(value)
    if not sid.strip():
        raise SampleError(f"{where}: id is an empty string", "bad-id")
    return sid


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def record_identity(record: Any, index: int, where: str) -> Tuple[str, str]:
    """``(sample id, where)`` for one JSON record: its ``id`` field (:func:`scalar_id`) or its
    ``index``; ``where`` gains the id.

    Raises :class:`SampleError` naming ``where``: the reason of a
    :class:`~mmit.data.record_io.BadRecord` (a record the file reader could not read:
    ``too-deep``, ``bad-encoding``, ...), ``invalid-record`` when the record is not a JSON object,
    ``bad-id`` when its id is neither a string nor an integer (or is empty)."""
    if isinstance(record, BadRecord):
        raise record.error(where)
    if not isinstance(record, dict):
        raise SampleError(f"{where}: record is not a JSON object ({type(record).__name__})",
                          "invalid-record")
    sid = scalar_id(record.get("id", index), where)
    return sid, f"{where} (id {sid!r})"


_DUPLICATE_IDS_ALLOWED: ContextVar[bool] = ContextVar("mmit_duplicate_ids_allowed", default=False)


@contextmanager
def allow_duplicate_ids(allowed: bool = True) -> Iterator[None]:
    """Within the block, :class:`IdSet` accepts repeated ids (default outside: refused as
    ``duplicate-id``). For sources whose ids are not record ids: LLaVA-Instruct-150K and
    ``llava_v1_5_mix665k.json`` use the COCO image id as ``id``, shared by every record about that
    image (~158k records on ~81k images), so refusing repeats drops about half of them. A lazy reader
    must be iterated inside the block (a ``ContextVar``)."""
    token = _DUPLICATE_IDS_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _DUPLICATE_IDS_ALLOWED.reset(token)


class IdSet:
    """The ids already yielded by one reader call; :meth:`check` refuses a second use (unless inside
    :func:`allow_duplicate_ids`).

    Memory: one string per sample (a 10M-row WebVid CSV needs roughly 1 GB)."""

    def __init__(self) -> None:
        self._seen: set = set()

    def check(self, sample_id: str, where: str) -> None:
        """Record ``sample_id``; raise :class:`SampleError` ``duplicate-id`` naming ``where`` if an
        earlier sample of this reader already had it (the earlier one is kept)."""
        if _DUPLICATE_IDS_ALLOWED.get():
            return
        if sample_id in self._seen:
            raise SampleError(f"{where}: id {sample_id!r} was already used by an earlier record "
                              "(duplicate id; the first one is kept)", "duplicate-id")
        self._seen.add(sample_id)


def unique_samples(samples: Iterable[Sample], missing: str, stats: SkipCounter,
                   where: str) -> Iterator[Sample]:
    """``samples`` without the ones whose id an earlier sample had: each is counted in ``stats``
    as ``duplicate-id`` (``missing="skip"``) or raised as a :class:`SampleError` naming ``where``
    (the input file) and the id (``"error"``). The inner iterator is closed when this one is."""
    ids = IdSet()
    try:
        for sample in samples:
            try:
                ids.check(sample.id, where)
            except SampleError as e:
                if missing == "error":
                    raise
                stats.add(e.reason, sample.id, str(e))
                continue
            yield sample
    finally:
        getattr(samples, "close", lambda: None)()


def open_annotation(path: Any, media_root: Any, missing: str, dataset: str,
                    default_root: Callable[[str], str] = lambda p: os.path.dirname(os.path.abspath(p))
                    ) -> Tuple[str, str]:
    """The preamble every file reader shares: check ``missing``, check that the annotation file
    exists, and pick the media root (``media_root``, else ``default_root(path)``: the file's folder).

    Returns ``(path, media root)`` as strings. Raises ``ValueError`` for a bad ``missing`` policy and
    ``FileNotFoundError`` naming ``dataset`` and the path."""
    check_missing_policy(missing)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset} annotation file not found: {path}")
    root = os.fspath(media_root) if media_root is not None else default_root(path)
    return path, root


def check_missing_policy(missing: str) -> str:
    """Return ``missing`` if it is ``skip`` or ``error``; raise ``ValueError`` otherwise."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be 'skip' or 'error', got {missing!r}")
    return missing


def apply_policy(items: Iterable[Tuple[Any, Any, str]],
                 to_sample: Callable[[Any, Any, str], Sample], missing: str,
                 stats: SkipCounter, record_id: Callable[[Any, Any], Any]) -> Iterator[Sample]:
    """Turn ``(index, record, where)`` items into validated samples under a missing policy.

    ``to_sample(index, record, where)`` builds a :class:`Sample` or raises :class:`SampleError`;
    the sample is then checked with :meth:`Sample.validate`. Under ``missing="skip"`` a failing
    record is counted in ``stats`` under the error's reason with ``record_id(index, record)`` and
    its message, so that records in == yielded + ``stats.total``; under ``"error"`` the error is
    raised with ``where`` (file and record) at the front of its message. A
    :class:`~mmit.data.record_io.BadRecord` item fails with its own reason, and a sample whose id an
    earlier one had fails as ``duplicate-id`` (:class:`IdSet`).
    """
    check_missing_policy(missing)
    ids = IdSet()
    for index, record, where in items:
        try:
            if isinstance(record, BadRecord):
                raise record.error(where)
            sample = to_sample(index, record, where)
            try:
                sample.validate()
            except SampleError as e:
                raise SampleError(f"{where}: {e}", e.reason) from None
            ids.check(sample.id, where)
        except SampleError as e:
            if missing == "error":
                raise
            stats.add(e.reason, record_id(index, record), str(e))
            continue
        yield sample
