"""The one record type every source format is normalised into (docs/architecture.md, "Data").

A :class:`Sample` is what readers in ``mmit.data.sources`` yield, what ``mmit convert`` writes into a
shard's ``.json`` member (media bytes go in their own members), and what the collator turns into
token ids, labels and pixel tensors. Nothing downstream of a reader knows which dataset a sample
came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from mmit.constants import IMAGE_PLACEHOLDER, MEDIA_KINDS, MEDIA_PLACEHOLDERS, ROLES


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

    def validate(self) -> "Sample":
        """Check roles and placeholder counts. Returns self; raises :class:`SampleError` naming the id.

        Rules: roles are ``system|user|assistant``; at most one leading system turn; then user and
        assistant alternate starting with user; for every media kind the number of its placeholders
        (:data:`mmit.constants.MEDIA_PLACEHOLDERS`: ``<image>``, ``<video>``, ``<audio>``,
        ``<pointcloud>``) equals the number of media items of that kind (reasons
        ``image-count-mismatch``, ``video-count-mismatch``, ...).
        """
        turns = self.turns
        if not turns:
            raise SampleError(f"sample {self.id!r}: no turns", "no-turns")
        for i, t in enumerate(turns):
            if t.role not in ROLES:
                raise SampleError(f"sample {self.id!r}: turn {i} has unknown role {t.role!r}",
                                  "bad-role")
        body = turns[1:] if turns[0].role == "system" else turns
        for i, t in enumerate(body):
            want = "user" if i % 2 == 0 else "assistant"
            if t.role != want:
                raise SampleError(
                    f"sample {self.id!r}: roles do not alternate: turn {i + len(turns) - len(body)} "
                    f"is {t.role!r}, expected {want!r}", "roles-not-alternating")
        for kind, ph in MEDIA_PLACEHOLDERS.items():
            n_media = sum(1 for m in self.media if m.kind == kind)
            n_ph = self.num_placeholders(ph)
            if n_ph != n_media:
                raise SampleError(f"sample {self.id!r}: {n_ph} {ph} placeholder(s) but {n_media} {kind}(s)",
                                  f"{kind}-count-mismatch")
        return self

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
