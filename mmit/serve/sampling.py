"""Decoding settings shared by ``mmit generate``, ``mmit chat`` and ``mmit serve``.

Greedy by default (``temperature`` 0); ``temperature > 0`` samples (nucleus sampling with ``top_p``,
Holtzman et al. 2019, arXiv:1904.09751); ``num_beams > 1`` is beam search (not streamed: transformers'
streamers do not take beams).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

#: Upper bound on ``max_new_tokens`` a client may ask for (a server protects itself).
MAX_NEW_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. Raises ``ValueError`` naming the field for a value out of range:
    ``temperature`` >= 0, 0 < ``top_p`` <= 1, 1 <= ``num_beams`` <= 16,
    1 <= ``max_new_tokens`` <= :data:`MAX_NEW_TOKENS_LIMIT`, ``seed`` an int or None."""

    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1
    max_new_tokens: int = 64
    seed: Optional[int] = None

    def __post_init__(self):
        checks = (("temperature", isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
                   and 0 <= self.temperature < float("inf"), "a number >= 0"),
                  ("top_p", isinstance(self.top_p, (int, float)) and not isinstance(self.top_p, bool)
                   and 0 < self.top_p <= 1, "a number in (0, 1]"),
                  ("num_beams", _int(self.num_beams) and 1 <= self.num_beams <= 16, "an integer in [1, 16]"),
                  ("max_new_tokens", _int(self.max_new_tokens) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT,
                   f"an integer in [1, {MAX_NEW_TOKENS_LIMIT}]"),
                  ("seed", self.seed is None or _int(self.seed), "an integer"))
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> Dict[str, Any]:
        """transformers ``generate`` keywords (``max_new_tokens`` not included): ``do_sample`` False
        at temperature 0, else ``do_sample``, ``temperature``, ``top_p``; ``num_beams``."""
        kw: Dict[str, Any] = {"do_sample": not self.greedy, "num_beams": self.num_beams}
        if not self.greedy:
            kw.update(temperature=float(self.temperature), top_p=float(self.top_p))
        return kw

    def apply_seed(self) -> None:
        """Seed torch's generators when ``seed`` is set (reproducible sampling)."""
        if self.seed is not None:
            import torch

            torch.manual_seed(self.seed)

    def replace(self, **changes) -> "Sampling":
        return Sampling(**{**asdict(self), **changes})


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def add_checkpoint_args(parser: argparse.ArgumentParser, system_help: str) -> None:
    """The options ``mmit chat`` and ``mmit serve`` share besides decoding: ``--checkpoint``,
    ``--system``, ``--max-images`` and ``--trust-remote-code`` (off unless given on the command line)."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("--system", default=None, help=system_help)
    parser.add_argument("--max-images", type=int, default=4, help="images allowed in one conversation or request")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model folders the checkpoint names run their own Python code")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-p``, ``--num-beams``, ``--max-new-tokens``, ``--seed``."""
    d = Sampling()
    parser.add_argument("--temperature", type=float, default=d.temperature,
                        help="0 (default): greedy decoding; > 0: sample with this temperature")
    parser.add_argument("--top-p", type=float, default=d.top_p,
                        help="nucleus sampling: keep the smallest token set with this much probability (with "
                             "--temperature > 0)")
    parser.add_argument("--num-beams", type=int, default=d.num_beams, help="beam search with this many beams")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible answers)")


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The :class:`Sampling` of parsed :func:`add_sampling_args` flags (``ValueError`` when out of range)."""
    return Sampling(temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams,
                    max_new_tokens=args.max_new_tokens, seed=args.seed)
