"""Checkpoints: trainable weights (safetensors), resolved config, tokenizer, optimizer, scheduler,
RNG states and the data position, so ``--resume`` continues mid-epoch with the same data order.

Layout of one checkpoint folder::

    config.yaml          resolved RunConfig (the family's ``checkpoint_config``; relative paths resolve here)
    model.safetensors    the weights that train in this stage (all of them after ``full``), gathered as a
                         full state dict (``accelerator.get_state_dict``: whole tensors under FSDP/ZeRO-3)
    tokenizer/           tokenizer with its chat template
    optimizer.pt         optimizer state (tensors and numbers only; loaded with weights_only=True)
    scheduler.pt         lr-scheduler state (likewise)
    rng.json, rng.safetensors   Python / NumPy / torch RNG states
    trainer_state.json   step, epoch, data position, skip counts; written last (marks completeness)

    ...                  family files (``save_extra``: EMA weights, the Q-Former tokenizer, ...)

Checkpoints live in ``<output_dir>/checkpoints/step-XXXXXXX``; the final model also in
``<output_dir>/final`` (no optimizer state). Loading one is the family's pure ``build`` + the weights +
``load_extra``: nothing is written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Collection, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmit.config.paths import absolutise
from mmit.config.schema import RunConfig, load_config, save_config

STATE_FILE = "trainer_state.json"
_STEP_RX = re.compile(r"^step-(\d+)$")


def trainable_state_dict(model: nn.Module, only_trainable: bool = True, keep: Collection[str] = ()
                         ) -> Dict[str, torch.Tensor]:
    """Parameters (deduplicated when tied) that require grad or are named in ``keep`` (frozen weights a
    rebuilt model would not have: loaded from ``model.init_from`` or set in ``prepare_for_training``),
    or all of them; contiguous CPU copies."""
    keep = set(keep)
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters()
            if p.requires_grad or n in keep or not only_trainable}


def select_weights(state_dict: Dict[str, torch.Tensor], model: nn.Module, only_trainable: bool = True,
                   keep: Collection[str] = ()) -> Dict[str, torch.Tensor]:
    """The entries of a full ``state_dict`` (e.g. ``accelerator.get_state_dict(model)``) that are
    parameters of ``model`` requiring grad or named in ``keep`` (or all its parameters), as contiguous
    CPU copies. Raises ``KeyError`` naming a parameter missing from ``state_dict``."""
    keep = set(keep)
    names = [n for n, p in model.named_parameters() if p.requires_grad or n in keep or not only_trainable]
    missing = [n for n in names if n not in state_dict]
    if missing:
        raise KeyError(f"state dict lacks {len(missing)} parameter(s), e.g. {missing[:3]}")
    return {n: state_dict[n].detach().to("cpu").contiguous().clone() for n in names}


def save_weights(model: nn.Module, path: str | Path, only_trainable: bool = True,
                 state_dict: Optional[Dict[str, torch.Tensor]] = None, keep: Collection[str] = ()) -> None:
    """Write the trainable parameters and those named in ``keep`` (or all parameters) to a safetensors
    file, keyed by parameter name; taken from ``state_dict`` when given (a gathered full state dict),
    else from the model."""
    weights = (trainable_state_dict(model, only_trainable, keep) if state_dict is None
               else select_weights(state_dict, model, only_trainable, keep))
    save_file(weights, str(path), metadata={"format": "pt"})


def load_weights(model: nn.Module, path: str | Path) -> int:
    """Load a (partial) state dict from safetensors. Every key in the file must exist in the model
    with the same shape; raises ``KeyError`` / ``ValueError`` naming the file otherwise. Returns the
    number of tensors loaded."""
    sd = load_file(str(path))
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    unknown = [k for k in sd if k not in params]
    if unknown:
        raise KeyError(f"{path}: {len(unknown)} tensor(s) not in the model, e.g. {unknown[:3]}")
    with torch.no_grad():
        for k, v in sd.items():
            if params[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, model has {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].dtype))
    return len(sd)


def _rng_state() -> Tuple[dict, Dict[str, torch.Tensor]]:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"python": [py_version, list(py_state), py_gauss],
            "numpy": [np_state[0], np_state[1].tolist(), *[x for x in np_state[2:]]]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return meta, tensors


def _set_rng_state(meta: dict, tensors: Dict[str, torch.Tensor]) -> None:
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda"))]
        if states:
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(path: str | Path, *, model: nn.Module, cfg: RunConfig, tokenizer, trainer_state: dict,
                    optimizer=None, scheduler=None, only_trainable: bool = True,
                    extra: Optional[Callable[[nn.Module, Path], None]] = None,
                    state_dict: Optional[Dict[str, torch.Tensor]] = None, keep: Collection[str] = ()) -> Path:
    """Write a checkpoint folder atomically (a temporary folder renamed into place). Main process only.

    ``model`` is the unwrapped model (names, ``requires_grad``); ``state_dict`` its gathered full state
    dict (default: read from ``model``). ``keep``: frozen parameters saved too (:func:`save_weights`).
    ``extra(model, folder)`` writes family-specific files (e.g. EMA weights) before the folder is marked
    complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_config(cfg, tmp / "config.yaml")
    save_weights(model, tmp / "model.safetensors", only_trainable, state_dict, keep)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if extra is not None:
        extra(model, tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    meta, tensors = _rng_state()
    (tmp / "rng.json").write_text(json.dumps(meta))
    save_file(tensors, str(tmp / "rng.safetensors"))
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def load_training_state(path: str | Path, optimizer=None, scheduler=None) -> dict:
    """Restore optimizer, scheduler and RNG states from a checkpoint; returns ``trainer_state``."""
    path = Path(path)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(json.loads((path / "rng.json").read_text()), load_file(str(path / "rng.safetensors")))
    return json.loads((path / STATE_FILE).read_text())


def list_checkpoints(output_dir: str | Path):
    """Complete step checkpoints under ``<output_dir>/checkpoints``, oldest first, as (step, path)."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_RX.match(d.name)
            if m and (d / STATE_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The complete step checkpoint with the highest step, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``keep <= 0`` keeps all)."""
    if keep > 0:
        for _, d in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(d, ignore_errors=True)


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its ``final``, else its latest step checkpoint).
    Raises ``FileNotFoundError`` naming the path."""
    p = Path(path)
    if (p / "config.yaml").is_file() and (p / "model.safetensors").is_file():
        return p
    if (p / "final" / "config.yaml").is_file():
        return p / "final"
    latest = latest_checkpoint(p)
    if latest is not None:
        return latest
    raise FileNotFoundError(f"no mmit checkpoint at {path} (expected config.yaml + model.safetensors, "
                            "or a run folder with final/ or checkpoints/step-*)")


def load_model_from_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """Rebuild the model from the checkpoint's config (the family's pure ``build``) and load its
    weights; writes nothing.

    Returns ``(model, tokenizer, cfg)``; the model is in eval mode. Raises ``FileNotFoundError``.
    """
    from transformers import AutoTokenizer

    from mmit.families import get_family

    ckpt = resolve_checkpoint_dir(path)
    cfg = load_config(str(ckpt / "config.yaml"))
    absolutise(cfg, ckpt)  # relative path fields (``llm``, ``qformer_tokenizer``, ...) live in the checkpoint
    family = get_family(cfg.family)
    model, tokenizer = family.build(cfg, dtype)
    if (ckpt / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt / "tokenizer"))
    load_weights(model, ckpt / "model.safetensors")
    family.load_extra(model, ckpt, cfg)
    model.eval()
    return model, tokenizer, cfg
