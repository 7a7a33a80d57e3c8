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
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

from mmit.constants import IMAGE_PLACEHOLDER, MEDIA_PLACEHOLDERS
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
    unknown role, ``no-turns`` for an empty list.
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
        turns.append(Turn(role=normalize_role(role, f"{where}: turn {i}"), content=text))
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
    users = [i for i, t in enumerate(out) if t.role == "user"]
    if sum(counts) == 0:
        if users:
            i = users[0]
            out[i] = Turn("user", f"{placeholder}\n" * n_images + out[i].content.strip())
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


def record_identity(record: Any, index: int, where: str) -> Tuple[str, str]:
    """``(sample id, where)`` for one JSON record: its ``id`` field (string or integer, kept as a
    string so ids like ``000000033471`` keep their zeros) or its ``index``; ``where`` gains the id.

    Raises :class:`SampleError` (``invalid-record``) naming ``where`` when the record is not a JSON
    object or its id is neither a string nor an integer."""
    if not isinstance(record, dict):
        raise SampleError(f"{where}: record is not a JSON object ({type(record).__name__})",
                          "invalid-record")
    rid = record.get("id", index)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise SampleError(f"{where}: 'id' must be a string or integer, got {rid!r}",
                          "invalid-record")
    sid = str(rid)
    return sid, f"{where} (id {sid!r})"


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
    raised with ``where`` (file and record) at the front of its message.
    """
    check_missing_policy(missing)
    for index, record, where in items:
        try:
            sample = to_sample(index, record, where)
            try:
                sample.validate()
            except SampleError as e:
                raise SampleError(f"{where}: {e}", e.reason) from None
        except SampleError as e:
            if missing == "error":
                raise
            stats.add(e.reason, record_id(index, record), str(e))
            continue
        yield sample
