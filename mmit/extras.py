"""Optional dependencies: which ``pip install 'mmit[EXTRA]'`` provides which package.

A LLaVA-only install needs none of them (``pyproject.toml``: the core dependencies). Code that needs
one imports it inside the function that uses it, through :func:`require`, so that a missing package is
a one-line error naming the extra instead of a bare ``ModuleNotFoundError``; :func:`missing` lets the
config checks (:mod:`mmit.config.validate`) say so before any model is built.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Dict, List, Tuple

#: import name -> (extra, pip distribution name). Keep in step with ``[project.optional-dependencies]``.
EXTRAS: Dict[str, Tuple[str, str]] = {
    "diffusers": ("diffusion", "diffusers"),
    "open_clip": ("towers", "open_clip_torch"),
    "timm": ("towers", "timm"),
    "pycocoevalcap": ("eval", "pycocoevalcap"),
    "sklearn": ("eval", "scikit-learn"),
    "rouge_score": ("eval", "rouge-score"),
    "pyarrow": ("parquet", "pyarrow"),
    "nltk": ("eval", "nltk"),
    "av": ("video", "av"),
    "ray": ("ray", "ray"),
    "bitsandbytes": ("qlora", "bitsandbytes"),
    "tensorboard": (None, "tensorboard"),  # core; listed for the hint
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "gradio": ("serve", "gradio"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the ``pip install`` line."""


def install_hint(module: str) -> str:
    """``pip install 'mmit[EXTRA]'`` (or ``pip install DIST`` for a package of no extra)."""
    extra, dist = EXTRAS.get(module, (None, module))
    return f"pip install 'mmit[{extra}]'" if extra else f"pip install {dist}"


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it; a module blocked in ``sys.modules``
    with None counts as missing)."""
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: List[str]) -> List[str]:
    """The names in ``modules`` that are not installed."""
    return [m for m in modules if not available(m)]


def require(module: str, what: str = "") -> ModuleType:
    """Import ``module`` (dotted names allowed: its top package decides the extra).

    Raises :class:`MissingExtraError` (an ``ImportError``): ``"<what> needs the <pkg> package:
    pip install 'mmit[extra]'"``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if getattr(e, "name", None) not in (None, module, top) and not str(getattr(e, "name", "")).startswith(top):
            raise  # a package that is there but broken: its own error
        need = f"{what} needs" if what else "this needs"
        raise MissingExtraError(f"{need} the {EXTRAS.get(top, (None, top))[1]} package, which is not installed: "
                                f"{install_hint(top)}") from None
