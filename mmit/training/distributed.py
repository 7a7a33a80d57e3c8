"""Multi-process training through accelerate: DDP, FSDP (version 2) and DeepSpeed ZeRO-2/3, chosen by
the accelerate config file the run is launched with (``configs/accelerate/``).

What the trainer needs beyond ``Accelerator()`` lives here:

* :func:`check_launch`: ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate
  starts several CPU processes only through ``mpirun``); that is an error here, not a silent
  one-process run.
* :func:`build_accelerator`: gradient accumulation handed to accelerate (DeepSpeed scales and steps by
  it), DDP's ``find_unused_parameters`` only when the data needs it (:func:`find_unused_parameters`),
  FSDP on CPU (accelerate leaves FSDP off on CPU; mmit turns FSDP2 on there, for tests and debugging),
  FSDP version 1 refused (the optimizer is prepared together with the model, which needs FSDP2).
* :func:`fill_deepspeed_config`: the DeepSpeed JSON's ``auto`` values from ``train`` and the model.
* :func:`freeze_unused_encoder_parameters`: a vision tower's layers after ``select_layer`` (and
  heads its features never pass through) do not train: DDP would wait for their gradients forever.
* :func:`gather_rank_states` / :func:`set_rank_rng` / :func:`optimizer_state` / :func:`load_optimizer_state`:
  each process's data position and RNG, and the optimizer's full state under FSDP (a DeepSpeed
  engine saves its own, :func:`save_deepspeed_state`), so that resume stays exact.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

log = logging.getLogger("mmit.train")

#: ``1`` / ``0`` forces DDP's ``find_unused_parameters`` on / off (default: :func:`find_unused_parameters`).
FIND_UNUSED_ENV = "MMIT_DDP_FIND_UNUSED"
#: Sub-folder of a checkpoint with a DeepSpeed engine's own (sharded) optimizer state.
DEEPSPEED_DIR = "deepspeed"
_MPI_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def _parent_cmdline() -> List[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def asked_processes(argv: Sequence[str]) -> Optional[int]:
    """The process count an ``accelerate launch`` command line asks for (``--num_processes N``,
    ``--num-processes=N``, else the ``num_processes`` of its ``--config_file``); None if it names none."""
    value, config = None, None
    for i, a in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(flag + "="):
                value = a.split("=", 1)[1]
        if a in ("--config_file", "--config-file") and i + 1 < len(argv):
            config = argv[i + 1]
    if value is None and config is not None:
        try:
            import yaml

            value = (yaml.safe_load(Path(config).read_text()) or {}).get("num_processes")
        except (OSError, ValueError, AttributeError):
            value = None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def check_launch(environ: Optional[Mapping[str, str]] = None, parent_argv: Optional[Sequence[str]] = None) -> None:
    """Raise ``ValueError`` when ``accelerate launch --cpu`` asked for several processes but started
    one (this process, with no rank environment and no MPI). ``environ`` / ``parent_argv`` default to
    this process's environment and its parent's command line (``/proc``)."""
    env = os.environ if environ is None else environ
    if str(env.get("ACCELERATE_USE_CPU", "")).lower() != "true" or any(k in env for k in _MPI_VARS):
        return
    argv = list(_parent_cmdline() if parent_argv is None else parent_argv)
    if not any(a.endswith("accelerate") or a == "launch" for a in argv):
        return
    n = asked_processes(argv)
    if n is not None and n > 1:
        raise ValueError(
            f"`accelerate launch --cpu` started 1 process although {n} were asked for (accelerate starts several "
            "CPU processes only through mpirun). For CPU training in several processes run "
            f"`accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes {n} -m mmit.cli train ...` "
            f"(without --cpu; gloo is used when there is no GPU) or `torchrun --nproc_per_node {n} -m mmit.cli train ...`")


def find_unused_parameters(mixed_media: Optional[bool], environ: Optional[Mapping[str, str]] = None
                           ) -> Tuple[bool, str]:
    """DDP's ``find_unused_parameters`` and why. On only when a batch may leave a trainable module
    unused: when the data mixes samples with different media (``mixed_media`` True, e.g. text-only
    samples that skip the vision tower and projector) or that is unknown (None). Structurally unused
    weights are frozen instead (:func:`freeze_unused_encoder_parameters`). :data:`FIND_UNUSED_ENV`
    overrides. Raises ``ValueError`` for another value of it."""
    env = os.environ if environ is None else environ
    forced = env.get(FIND_UNUSED_ENV)
    if forced is not None and forced != "":
        if forced.lower() not in ("0", "1", "true", "false"):
            raise ValueError(f"{FIND_UNUSED_ENV}={forced!r}: expected 1 or 0")
        return forced.lower() in ("1", "true"), f"{FIND_UNUSED_ENV}={forced}"
    if mixed_media is False:
        return False, "every sample holds the same media kinds"
    why = "samples with and without some media" if mixed_media else "media mix unknown (no per-shard stats)"
    return True, f"{why}: a batch may leave an encoder or connector without gradient"


def build_accelerator(precision: str, gradient_accumulation_steps: int, find_unused: bool):
    """The run's ``Accelerator``: ``precision`` as accelerate spells it (``no``/``bf16``/``fp16``), CPU
    when there is no GPU (gloo), gradient accumulation (accelerate divides the loss by it; DeepSpeed
    its engine), DDP kwargs. Under an FSDP launch on CPU FSDP2 is switched on. Raises ``ValueError``
    for FSDP version 1."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, FullyShardedDataParallelPlugin

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused else []
    acc = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                      gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=handlers)
    fsdp_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_env and acc.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU needs fsdp_version: 2 (torch's FSDP1 refuses CPU with auto-wrapping); "
                             "use configs/accelerate/fsdp.yaml")
        # as accelerate's own FSDP set-up does: AcceleratorState re-reads PartialState's type when re-created
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
        if acc.is_main_process:
            log.warning("FSDP2 on CPU (gloo): accelerate leaves FSDP off on CPU, mmit turns it on (slow; for tests)")
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        raise ValueError("mmit trains with FSDP version 2 only (fsdp_version: 2, as configs/accelerate/fsdp.yaml): "
                         "the optimizer is prepared together with the model")
    return acc


def set_fsdp_wrap_classes(model: nn.Module) -> List[str]:
    """Give ``model`` a ``_no_split_modules`` (what accelerate's ``TRANSFORMER_BASED_WRAP`` shards one
    by one when the config names no class) unless it has one: the union of those of its transformers
    parts (the LLM's decoder layer, the CLIP / EVA / Q-Former layers), so one FSDP config fits every
    family. Returns the list."""
    names = getattr(model, "_no_split_modules", None)
    if names is None:
        found, present = set(), {type(m).__name__ for m in model.modules()}
        for m in model.modules():
            if m is not model and isinstance(getattr(m, "_no_split_modules", None), (list, tuple, set)):
                found |= set(m._no_split_modules)
        model._no_split_modules = names = sorted(found & present)  # a class it lacks is an error to accelerate
    return list(names)


def _hidden_size(model: nn.Module) -> Optional[int]:
    sizes = [int(m.config.hidden_size) for m in model.modules()
             if isinstance(getattr(getattr(m, "config", None), "hidden_size", None), int)]
    return max(sizes) if sizes else None


def fill_deepspeed_config(plugin, batch_size: int, gradient_accumulation_steps: int, max_grad_norm: float,
                          world: int, model: Optional[nn.Module] = None) -> dict:
    """Replace the ``auto`` values of a DeepSpeed config (``plugin``: accelerate's ``DeepSpeedPlugin``)
    that accelerate cannot fill without a DataLoader or an HF ``model.config``: batch sizes, gradient
    accumulation, clipping (``train.max_grad_norm``; 0 turns it off) and, from the largest
    ``config.hidden_size`` in ``model``, the bucket sizes. Returns the config. Raises ``ValueError``
    when an ``auto`` bucket size is left and the model has no ``config.hidden_size``."""
    values = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": gradient_accumulation_steps,
              "train_batch_size": batch_size * gradient_accumulation_steps * world,
              "gradient_clipping": float(max_grad_norm)}
    hidden = _hidden_size(model) if model is not None else None
    if hidden:
        values.update({"zero_optimization.reduce_bucket_size": hidden * hidden,
                       "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                       "zero_optimization.stage3_param_persistence_threshold": 10 * hidden})
    for key, value in values.items():
        if plugin.is_auto(key):
            plugin.fill_match(key, must_match=False, **{key: value})
    left = [k for k in ("zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
                        "zero_optimization.stage3_param_persistence_threshold") if plugin.is_auto(k)]
    if left and model is not None:
        raise ValueError(f"DeepSpeed config: cannot fill {left} (no config.hidden_size in the model): give numbers")
    return plugin.deepspeed_config


def freeze_unused_encoder_parameters(model: nn.Module) -> Dict[str, List[str]]:
    """Freeze the trainable parameters of every vision tower in ``model`` that its features never
    depend on: the blocks after ``select_layer`` (``-2``: the last block), a pooler's final norm (HF
    CLIP's ``post_layernorm``). Found by one forward/backward of a blank image through the tower
    (eval mode, RNG untouched), so every backend is covered. Such weights would never change
    anyway; frozen, DDP does not wait for their gradients and checkpoints leave them out (a rebuilt
    tower has them). Returns ``{tower path: [frozen parameter names]}`` (towers with none left out)."""
    from mmit.models.encoders.base import VisionTower

    frozen: Dict[str, List[str]] = {}
    for path, tower in model.named_modules():
        if not isinstance(tower, VisionTower):
            continue
        named = [(n, p) for n, p in tower.named_parameters() if p.requires_grad]
        if not named:
            continue
        was_training = tower.training
        tower.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                x = torch.zeros(1, 3, tower.image_size, tower.image_size)
                out = tower(x)
                grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
        finally:
            tower.train(was_training)
        unused = [(n, p) for (n, p), g in zip(named, grads) if g is None]
        for _, p in unused:
            p.requires_grad_(False)
        if unused:
            frozen[path] = [n for n, _ in unused]
    return frozen


def gather_rank_states(accelerator, local: dict) -> List[dict]:
    """``local`` of every process, in rank order (a collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return [local]
    from accelerate.utils import gather_object

    return list(gather_object([local]))


def rng_state() -> Tuple[dict, Dict[str, torch.Tensor]]:
    """This process's Python / NumPy / torch RNG states (as :mod:`mmit.training.checkpoint` saves them)."""
    from mmit.training.checkpoint import _rng_state

    return _rng_state()


def save_rank_rng(folder: Path, states: Sequence[dict]) -> None:
    """Write the RNG states of ranks 1.. (``states[r]["rng"]``) as ``rng-rank<r>.json`` /
    ``.safetensors`` into a checkpoint folder (rank 0's are ``rng.json`` / ``rng.safetensors``)."""
    from safetensors.torch import save_file

    for r, st in enumerate(states):
        if r == 0:
            continue
        meta, tensors = st["rng"]
        (folder / f"rng-rank{r}.json").write_text(json.dumps(meta))
        save_file(tensors, str(folder / f"rng-rank{r}.safetensors"))


def set_rank_rng(folder: Path, rank: int) -> None:
    """Restore this process's RNG from a checkpoint (rank 0's is restored by ``load_training_state``).
    Raises ``FileNotFoundError`` when the checkpoint has none for ``rank``."""
    if rank == 0:
        return
    from safetensors.torch import load_file

    from mmit.training.checkpoint import _set_rng_state

    _set_rng_state(json.loads((folder / f"rng-rank{rank}.json").read_text()),
                   load_file(str(folder / f"rng-rank{rank}.safetensors")))


def rank_entry(trainer_state: dict, rank: int, world: int, where: Path) -> dict:
    """This process's ``{epoch, position, skipped}`` from a checkpoint's ``trainer_state``. Raises
    ``ValueError`` when the checkpoint was written by another number of processes (data positions are
    per process and do not map onto another split)."""
    ranks = trainer_state.get("ranks") or [{k: trainer_state.get(k) for k in ("epoch", "position", "skipped")}]
    if len(ranks) != world:
        raise ValueError(f"{where} was written by {len(ranks)} process(es); resume it with {len(ranks)} "
                         f"(this run has {world}): each process's data position is saved for that split only")
    return ranks[rank]


class SavedState:
    """A ready state dict behind the ``state_dict()`` that ``save_checkpoint`` calls."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def optimizer_state(accelerator, model, optimizer) -> dict:
    """The optimizer state to save: under FSDP the full state (parameter names as keys, gathered to
    the main process: a collective), else the optimizer's own ``state_dict()``."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(accelerator, model, optimizer, folder: Path) -> None:
    """Load what :func:`optimizer_state` saved (``optimizer.pt``; every process reads it), or under
    DeepSpeed the engine's state (:func:`save_deepspeed_state`)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        model.load_checkpoint(str(folder / DEEPSPEED_DIR), tag="engine", load_module_strict=False,
                              load_optimizer_states=True, load_lr_scheduler_states=False)
        return
    state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer.optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def save_deepspeed_state(accelerator, model, folder: Path) -> Optional[Path]:
    """Under DeepSpeed: every process writes its shard of the engine state (optimizer included) into
    ``folder`` (a collective); returns ``folder``, or None (nothing written) for other backends."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    model.save_checkpoint(str(folder), tag="engine", exclude_frozen_parameters=True)
    return folder
