"""Model families: what the shared trainer, checkpoints, generation, evaluation and export need to
know about each kind of model (:class:`~mmit.families.base.ModelFamily`).

Each family is one package, ``mmit/families/<name>/``: ``config.py`` (its ``model:`` section),
``model.py``, ``processor.py``, ``family.py`` (the hooks) and ``export.py``. Adding one is a new
folder plus one line in :data:`FAMILIES` (docs/architecture.md). Families are imported only when
used, so a family's heavy dependencies load only for runs that need them. Shared code reaches a
family only through this registry, never by importing its package.
"""

from __future__ import annotations

import importlib
from typing import Dict, Type

from mmit.families.base import ModelFamily
from mmit.registry import UnknownNameError

#: Family name -> ``"module:Class"`` of its :class:`ModelFamily`.
FAMILIES: Dict[str, str] = {
    "llava": "mmit.families.llava.family:LlavaFamily",
    "instructblip": "mmit.families.instructblip.family:InstructBlipFamily",
    "instructpix2pix": "mmit.families.instructpix2pix.family:InstructPix2PixFamily",
    "flamingo": "mmit.families.flamingo.family:FlamingoFamily",
    "video-llama": "mmit.families.video_llama.family:VideoLlamaFamily",
}


def get_family_class(name: str) -> Type[ModelFamily]:
    """The :class:`ModelFamily` subclass registered as ``name``.

    Raises :class:`~mmit.registry.UnknownNameError` listing the known families and close matches.
    """
    if name not in FAMILIES:
        raise UnknownNameError("model family", name, list(FAMILIES))
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_family(name: str) -> ModelFamily:
    """An instance of the family registered as ``name`` (families hold no state; see the contract)."""
    return get_family_class(name)()


def family_table(attr: str) -> Dict[str, tuple]:
    """``key -> (family, "module:function")`` over every family's ``exporters``, ``importers`` or
    ``commands``. Raises ``ValueError`` when two families register the same key."""
    out: Dict[str, tuple] = {}
    for fam in FAMILIES:
        for key, target in getattr(get_family_class(fam), attr).items():
            if key in out:
                raise ValueError(f"{attr} {key!r} is registered by families {out[key][0]!r} and {fam!r}")
            out[key] = (fam, target)
    return out


__all__ = ["FAMILIES", "ModelFamily", "family_table", "get_family", "get_family_class"]
