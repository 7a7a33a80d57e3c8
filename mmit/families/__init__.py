"""Model families: what the one trainer needs to know about each kind of model.

The trainer (:mod:`mmit.training.trainer`), checkpoint loading and ``mmit generate`` are shared by all
families; a family supplies how to build its model, turn a :class:`~mmit.data.sample.Sample` into
tensors, batch them, compute the loss and which parameters train. The run config's top-level
``family`` key picks one (default ``llava``).

Families are listed here as ``name -> "module:Class"`` and imported only when used, so a family's
heavy dependencies load only for runs that need them.
"""

from __future__ import annotations

import importlib
from typing import Dict

from mmit.families.base import ModelFamily
from mmit.registry import UnknownNameError

FAMILIES: Dict[str, str] = {
    "llava": "mmit.families.llava:LlavaFamily",
    "instructblip": "mmit.families.instructblip:InstructBlipFamily",
    "instructpix2pix": "mmit.diffusion.family:InstructPix2PixFamily",
}


def get_family(name: str) -> ModelFamily:
    """An instance of the family registered as ``name``.

    Raises :class:`~mmit.registry.UnknownNameError` listing the known families and close matches.
    """
    if name not in FAMILIES:
        raise UnknownNameError("model family", name, list(FAMILIES))
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["FAMILIES", "ModelFamily", "get_family"]
