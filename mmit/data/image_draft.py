"""Reduced-size JPEG decoding: how far :func:`mmit.data.media.decode_image` may shrink a JPEG while
decoding it (PIL's ``Image.draft``: libjpeg scales by 1/2, 1/4 or 1/8 during the IDCT, several times
faster than decoding at full size and resizing) for a caller that resizes it anyway."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

#: What each aspect-ratio policy scales to ``side`` before the final resize (``pad``: the long side of
#: the padded square; ``crop``: the short side, then a centre crop; ``resize``: each side on its own).
DRAFT_FITS = ("pad", "crop", "resize")


@dataclass(frozen=True)
class Draft:
    """Permission to decode a JPEG at a reduced size (module docstring) for a caller that resizes the
    image to ``side`` pixels under the aspect-ratio policy ``fit`` (one of :data:`DRAFT_FITS`, the
    values of ``VisionTowerConfig.image_aspect_ratio``). The decoded image keeps at least
    ``reducing_gap`` times the pixels per side that the resize needs (>= 1; PIL's ``thumbnail`` uses 2).

    Raises ``ValueError`` for a side below 1, an unknown ``fit`` or a gap below 1."""

    side: int
    fit: str = "pad"
    reducing_gap: float = 2.0

    def __post_init__(self):
        if self.side < 1 or self.fit not in DRAFT_FITS or not self.reducing_gap >= 1.0:
            raise ValueError(f"Draft needs side >= 1, fit in {DRAFT_FITS} and reducing_gap >= 1, got "
                             f"{self.side}, {self.fit!r}, {self.reducing_gap}")

    def scale(self, width: int, height: int) -> int:
        """The reduction (8, 4, 2 or 1: none) for a ``width x height`` JPEG: the largest that keeps at
        least :meth:`min_size` and divides both sides exactly (the reduced image is the original
        scaled, not stretched by a rounded-up edge), and under ``pad`` also the offset at which the
        square pads the image (so the image sits where it would at full size)."""
        w, h = self.min_size(width, height)
        offset = abs(width - height) // 2
        return next((s for s in (8, 4, 2) if width % s == 0 and height % s == 0 and width // s >= w
                     and height // s >= h and (self.fit != "pad" or offset == s * (abs(width - height) // s // 2))),
                    1)

    def min_size(self, width: int, height: int) -> Tuple[int, int]:
        """The smallest ``(width, height)`` a reduced decode of a ``width x height`` image may have."""
        want = self.side * self.reducing_gap
        if self.fit == "resize":
            return max(1, math.ceil(want)), max(1, math.ceil(want))
        scale = want / (max(width, height) if self.fit == "pad" else min(width, height))
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
