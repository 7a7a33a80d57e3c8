"""Name -> factory registries with kebab-case keys and close-match errors.

Every pluggable family (vision towers, projectors, LLMs, conversation templates, data formats) is a
:class:`Registry`. Names are kebab-case (``clip-vit-l-14-336``, ``mlp2x-gelu``); an unknown name
raises :class:`UnknownNameError` listing the closest registered names.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Dict, Generic, Iterator, List, Optional, Tuple, TypeVar

T = TypeVar("T")
_KEBAB = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")


class UnknownNameError(KeyError):
    """Raised when a registry lookup fails. ``str(err)`` names the registry and the close matches."""

    def __init__(self, family: str, name: str, known: List[str]):
        self.family, self.name, self.known = family, name, known
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        super().__init__(f"unknown {family} {name!r}{hint} (known: {', '.join(sorted(known))})")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class Registry(Generic[T]):
    """A named family of factories.

    Example::

        PROJECTORS = Registry("projector")

        @PROJECTORS.register("linear")
        def linear(in_dim, out_dim): ...

        PROJECTORS.get("linear")  # the factory
        PROJECTORS.get("lineer")  # UnknownNameError: unknown projector 'lineer'; did you mean: linear?

    Patterns (``register_pattern``) match families of names such as ``mlp{N}x-gelu``; the factory
    receives the ``re.Match`` as keyword ``match``.
    """

    def __init__(self, family: str):
        self.family = family
        self._items: Dict[str, T] = {}
        self._patterns: List[Tuple[re.Pattern, str, T]] = []

    def register(self, name: str, obj: Optional[T] = None):
        """Register ``obj`` under ``name`` (usable as a decorator). Raises ``ValueError`` on a
        non-kebab-case or duplicate name."""
        if not _KEBAB.match(name):
            raise ValueError(f"{self.family} name {name!r} is not kebab-case")
        if name in self._items:
            raise ValueError(f"{self.family} {name!r} is registered twice")

        def deco(o: T) -> T:
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def register_pattern(self, regex: str, example: str, obj: Optional[T] = None):
        """Register a factory for every name matching ``regex`` (full match); ``example`` is shown in
        listings and error messages."""

        def deco(o: T) -> T:
            self._patterns.append((re.compile(regex), example, o))
            return o

        return deco(obj) if obj is not None else deco

    def resolve(self, name: str) -> Tuple[T, Optional[re.Match]]:
        """Return ``(factory, match)``; ``match`` is None for exact names. Raises UnknownNameError."""
        if name in self._items:
            return self._items[name], None
        for rx, _, obj in self._patterns:
            m = rx.fullmatch(name)
            if m:
                return obj, m
        raise UnknownNameError(self.family, name, self.names())

    def get(self, name: str) -> T:
        return self.resolve(name)[0]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except UnknownNameError:
            return False

    def names(self) -> List[str]:
        """Registered exact names plus one example per pattern."""
        return sorted(self._items) + [ex for _, ex, _ in self._patterns]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
