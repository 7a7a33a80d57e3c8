"""Checkpoints: trainable weights (safetensors), resolved config, tokenizer, optimizer, scheduler,
RNG states and the data position, so ``--resume`` continues mid-epoch with the same data order.

Layout of one checkpoint folder::

    config.yaml          resolved RunConfig (the family's ``checkpoint_config``; relative paths resolve here)
    model.safetensors    the weights that train in this stage (all of them after ``full``), gathered as a
                         full state dict (``accelerator.get_state_dict``: whole tensors under FSDP/ZeRO-3)
    llm_adapter/         with ``train.lora``: the LLM's LoRA adapters in peft's format (adapter_model.safetensors,
                         adapter_config.json); model.safetensors then holds the other weights that train, under
                         the names of the model without adapters (:mod:`mmit.training.lora`)
    tokenizer/           tokenizer with its chat template
    optimizer.pt         optimizer state (tensors and numbers only; loaded with weights_only=True)
    scheduler.pt         lr-scheduler state (likewise)
    rng.json, rng.safetensors   Python / NumPy / torch RNG states
    trainer_state.json   step, epoch, data position, skip counts; written last (marks completeness),
                         deleted first when the checkpoint is pruned (a half-deleted one never looks complete)

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
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmit.config.paths import absolutise
from mmit.config.schema import RunConfig, save_config
from mmit.training.lora import ADAPTER_DIR, base_aliases, load_adapter, save_adapter, split_adapter_weights

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
                 state_dict: Optional[Dict[str, torch.Tensor]] = None, keep: Collection[str] = (),
                 adapter_dir: Optional[Path] = None) -> None:
    """Write the trainable parameters and those named in ``keep`` (or all parameters) to a safetensors
    file, keyed by parameter name; taken from ``state_dict`` when given (a gathered full state dict),
    else from the model. With ``adapter_dir``, LoRA adapters of ``model.llm`` go there in peft's format
    and the rest to ``path`` under the names of the model without adapters (``keep`` may use either)."""
    if adapter_dir is not None:
        aliases = base_aliases(model)  # ``keep`` names frozen weights by their names without adapters
        keep = set(keep) | {name for plain, name in aliases.items() if plain in keep}
    weights = (trainable_state_dict(model, only_trainable, keep) if state_dict is None
               else select_weights(state_dict, model, only_trainable, keep))
    if adapter_dir is not None:
        adapter, weights = split_adapter_weights(model, weights)
        if adapter:
            save_adapter(model, adapter_dir, adapter)
    save_file(weights, str(path), metadata={"format": "pt"})


def load_weights(model: nn.Module, path: str | Path) -> int:
    """Load a (partial) state dict from safetensors. Every key in the file must exist in the model
    with the same shape; raises ``KeyError`` / ``ValueError`` naming the file otherwise. A name of the
    model without LoRA adapters also finds its weight under an adapter's ``base_layer``. Returns the
    number of tensors loaded."""
    sd = load_file(str(path))
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    params.update({plain: params[name] for plain, name in base_aliases(model).items()})
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
    LoRA adapters of ``model.llm`` go to ``llm_adapter/`` in peft's format, the rest to
    ``model.safetensors`` under the names of the model without adapters.
    ``extra(model, folder)`` writes family-specific files (e.g. EMA weights) before the folder is marked
    complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_config(cfg, tmp / "config.yaml")
    save_weights(model, tmp / "model.safetensors", only_trainable, state_dict, keep, adapter_dir=tmp / ADAPTER_DIR)
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


def is_complete_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a complete checkpoint folder: its completion marker ``trainer_state.json``
    (written last by :func:`save_checkpoint`, deleted first by :func:`prune_checkpoints`) is a
    file, and ``config.yaml`` and ``model.safetensors`` are there."""
    p = Path(path)
    return all((p / name).is_file() for name in (STATE_FILE, "config.yaml", "model.safetensors"))


def _step_folders(output_dir: str | Path) -> List[Tuple[int, Path]]:
    """Every ``checkpoints/step-N`` folder, complete or not, as (step, path) sorted by step."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_RX.match(d.name)
            if m and d.is_dir():
                found.append((int(m.group(1)), d))
    return sorted(found)


def list_checkpoints(output_dir: str | Path) -> List[Tuple[int, Path]]:
    """Complete step checkpoints (:func:`is_complete_checkpoint`) under ``<output_dir>/checkpoints``,
    oldest first, as (step, path). Half-written (``step-N.tmp``) and half-deleted folders are left out."""
    return [(s, d) for s, d in _step_folders(output_dir) if is_complete_checkpoint(d)]


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The complete step checkpoint with the highest step, or None (incomplete ones are skipped)."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def delete_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint folder so that it never looks complete on the way: the completion marker
    goes first, then the rest. A process killed in between leaves a folder that
    :func:`list_checkpoints` skips. Raises ``OSError`` if the marker cannot be deleted."""
    p = Path(path)
    try:
        (p / STATE_FILE).unlink()
    except FileNotFoundError:
        pass
    shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete step checkpoints (``keep <= 0`` keeps all), each with
    :func:`delete_checkpoint` (marker first). Incomplete ``step-N`` folders older than the oldest kept
    checkpoint (left by a pruning that was killed) are deleted too. Raises ``OSError`` when a marker
    cannot be deleted; the folder then still counts as complete and the next pruning retries."""
    if keep <= 0:
        return
    complete = list_checkpoints(output_dir)
    if not complete:
        return
    oldest_kept = complete[-keep:][0][0]
    for step, d in _step_folders(output_dir):
        if step < oldest_kept:
            delete_checkpoint(d)


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


def load_model_from_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32,
                               trust_remote_code: bool = False):
    """Rebuild the model from the checkpoint's config (the family's pure ``build``) and load its
    weights; writes nothing.

    A checkpoint is data, never code: its ``config.yaml`` is read with
    :func:`~mmit.config.schema.load_checkpoint_config` (``!include``, Python and other custom YAML tags
    refused) and every ``trust_remote_code`` field of it is set to the caller's ``trust_remote_code``
    (``mmit generate`` / ``mmit eval --trust-remote-code``), whatever the saved config says (a warning
    names a config that asked for it). Without it, a model folder's ``auto_map`` code is never run:
    transformers uses its own class for the folder's ``model_type``, or refuses the folder.

    Args:
        path: a checkpoint folder or a run folder (:func:`resolve_checkpoint_dir`).
        dtype: the dtype the family builds the model in.
        trust_remote_code: allow the model folders the config names to run their own Python code.

    A checkpoint with ``llm_adapter/`` gets its LoRA adapters back on ``model.llm``
    (:func:`~mmit.training.lora.load_adapter`; never quantized, also after QLoRA).

    Returns ``(model, tokenizer, cfg)``; the model is in eval mode. Raises ``FileNotFoundError`` (no
    checkpoint), ``ValueError`` (a refused tag or a bad config, naming the file; custom code that
    transformers will not run without ``trust_remote_code``; adapters that do not fit the model) and
    ``OSError`` (a missing model folder).
    """
    from transformers import AutoTokenizer

    from mmit.config.schema import load_checkpoint_config
    from mmit.families import get_family

    ckpt = resolve_checkpoint_dir(path)
    cfg = load_checkpoint_config(ckpt / "config.yaml", trust_remote_code=trust_remote_code)
    absolutise(cfg, ckpt)  # relative path fields (``llm``, ``qformer_tokenizer``, ...) live in the checkpoint
    family = get_family(cfg.family)
    model, tokenizer = family.build(cfg, dtype)
    if (ckpt / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt / "tokenizer"), trust_remote_code=trust_remote_code)
    load_weights(model, ckpt / "model.safetensors")
    family.load_extra(model, ckpt, cfg)
    load_adapter(model, ckpt)
    model.eval()
    return model, tokenizer, cfg
