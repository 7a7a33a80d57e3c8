"""The training-run configuration.

One YAML file describes a whole run (``configs/<family>/*.yaml``). The top-level ``family`` key picks
the model family; the ``model`` section is that family's own config dataclass (registered with
:class:`FamilyConfig`, a draccus ``ChoiceRegistry``, as prismatic-vlms' model configs), so a LLaVA run
carries no Q-Former or diffusion settings. YAML names registry keys (never import paths); unknown
keys and values outside a field's ``Literal`` choices are errors at parse time; every field can be
overridden on the command line as ``--section.field=value``. The resolved config is written into
every run folder and every checkpoint as ``config.yaml``.

Config files are data (:mod:`mmit.config.yamlio`): read with PyYAML's safe loader, Python and custom
tags refused, ``!include`` only in a user's own config (never in a checkpoint's:
:func:`load_checkpoint_config`); ``trust_remote_code`` comes only from the command line
(:mod:`mmit.config.remote_code`).

Configs written before the family split (a top-level ``diffusion`` section and every family's keys
under ``model``) still load: :func:`migrate_legacy` moves ``diffusion`` into ``model`` for
``instructpix2pix`` and drops the other families' keys, and says so in a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import draccus

from mmit.config.lora import LoRAConfig
from mmit.config.parsing import _DataArgumentParser, check_keys, parse_dataclass  # noqa: F401  (parse_dataclass re-exported)
from mmit.config.trackers import parse_report_to

log = logging.getLogger("mmit.config")

#: Training stages (:attr:`TrainConfig.stage`); each family supports a subset (``ModelFamily.stages``).
Stage = Literal["align", "finetune", "full"]

DEFAULT_FAMILY = "llava"


@dataclass
class FamilyConfig(draccus.ChoiceRegistry):
    """Base of every family's ``model:`` section. A family registers its dataclass with
    ``@FamilyConfig.register_subclass("<family>")``; :func:`run_config_class` puts it under ``model``."""

    #: Start from an earlier run's weights (a checkpoint or run folder), e.g. LLaVA stage 2 from the
    #: stage-1 projector (``--pretrain_mm_mlp_adapter``). Only the tensors in that checkpoint are loaded.
    init_from: Optional[str] = None


@dataclass
class DataConfig:
    #: ``shards`` (webdataset tars: a folder, a glob, or brace notation) or a source format (``llava``).
    format: str = "shards"
    #: Shard folder / pattern, or the JSON file for a source format.
    path: str = ""
    #: Image folder that relative ``image`` paths resolve against (source formats only).
    media_root: Optional[str] = None
    #: Missing media: ``skip`` (counted) or ``error``.
    missing_media: Literal["skip", "error"] = "skip"
    #: A sample that does not fit ``max_length`` without cutting an image, or whose labels are all
    #: masked: ``skip`` (counted and logged) or ``error``.
    overflow: Literal["skip", "error"] = "skip"
    #: Keep samples whose answer is empty or whitespace (they would learn only the end-of-turn token);
    #: by default each is a counted ``empty-answer`` skip.
    allow_empty_answers: bool = False
    #: Shuffle buffer (samples) for shards; 0 disables. Source formats shuffle the whole list.
    shuffle_buffer: int = 1000
    #: Resampled mode for shards (sample shards with replacement: an endless stream, for several epochs).
    resampled: bool = False
    #: DataLoader worker processes that decode and preprocess (0: in the trainer's process, between
    #: steps). Batches, skip counts and resume are the same for any value; ``data_wait`` in
    #: ``metrics.jsonl`` says whether the trainer waits for data (above a few percent: raise this).
    num_workers: int = 0
    #: Batches per DataLoader worker message (with ``num_workers`` > 0). Receiving a message costs the
    #: trainer's process about a millisecond: raise this for small models whose step takes tens of
    #: milliseconds (the tiny demos use 4); 1 spreads an epoch's last batches over all the workers.
    batches_per_message: int = 1
    #: Batch multimodal and text-only samples apart and similar lengths together (LLaVA's
    #: ``group_by_modality_length``; seeded per epoch, resumable: :mod:`mmit.training.batching`).
    group_by_modality_length: bool = False
    #: Token budget per batch (rows x longest row, padding included); ``train.batch_size`` stays the
    #: cap on samples per batch. Null: batches of ``train.batch_size`` samples. Set ``train.max_steps``:
    #: an epoch's step count is estimated from ``batch_size``.
    max_tokens_per_batch: Optional[int] = None
    #: Pack several samples into each row of ``model.max_length`` tokens (per-sample position ids, no
    #: attention across samples; families with decoder-only splice fusion: llava).
    packing: bool = False


@dataclass
class TrainConfig:
    #: What trains; the family says what each stage means and which it supports (``align``: the
    #: connector only, ``finetune``: connector + LLM, ``full``: everything, tower included).
    stage: Stage = "finetune"
    #: Run folder: config.yaml, metrics.jsonl, checkpoints/, final/ (created if missing).
    output_dir: str = "runs/llava"
    #: Seed of the weights' init, data order and dropout (a resumed run continues the same stream).
    seed: int = 42
    #: Per-device micro-batch size.
    batch_size: int = 16
    #: Micro-batches per optimizer step (effective batch: batch_size x this x processes).
    gradient_accumulation_steps: int = 1
    #: Optimizer steps to run; -1 means ``epochs`` passes over the data.
    max_steps: int = -1
    #: Passes over the data when ``max_steps`` is -1 (fractions allowed).
    epochs: float = 1.0
    #: Peak learning rate (AdamW), reached after the warmup.
    lr: float = 2e-5
    #: Learning rate of the connector's parameter group (LLaVA's ``mm_projector_lr``; the family names
    #: the group: projector, Q-Former, ...); None means ``lr``.
    projector_lr: Optional[float] = None
    #: AdamW decoupled weight decay.
    weight_decay: float = 0.0
    #: AdamW first-moment decay.
    adam_beta1: float = 0.9
    #: AdamW second-moment decay.
    adam_beta2: float = 0.999
    #: AdamW epsilon.
    adam_eps: float = 1e-8
    #: Fraction of the optimizer steps spent in linear warmup from 0 (0 to 1).
    warmup_ratio: float = 0.03
    #: ``cosine`` (with linear warmup) or ``constant`` (with linear warmup).
    lr_scheduler: Literal["cosine", "constant"] = "cosine"
    #: Clip the gradients' global L2 norm to this (0: no clipping).
    max_grad_norm: float = 1.0
    #: ``auto`` (fp32 on CPU, bf16 on GPUs that support it, else fp16), ``fp32``, ``bf16``, ``fp16``.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: Recompute activations in the backward pass (less memory, about a third more compute).
    gradient_checkpointing: bool = False
    #: Save a checkpoint every N optimizer steps (0: only at the end).
    save_steps: int = 0
    #: Keep at most this many step checkpoints (0: keep all).
    save_total_limit: int = 2
    #: Write loss, lr and throughput to metrics.jsonl every N optimizer steps.
    logging_steps: int = 1
    #: Continue from the latest checkpoint in ``output_dir`` (``mmit train --resume`` sets this).
    resume: bool = False
    #: Where metrics go besides ``metrics.jsonl`` (always written): ``tensorboard`` (event files in the
    #: run folder), ``wandb``, ``mlflow``, several comma-separated (``tensorboard,wandb``), or ``none``.
    #: wandb and mlflow go through accelerate's trackers; their offline modes work with no network
    #: (``WANDB_MODE=offline``; mlflow logs to ``<output_dir>/mlflow.db`` unless
    #: ``MLFLOW_TRACKING_URI`` is set).
    report_to: str = "tensorboard"
    #: wandb project / mlflow experiment name (``report_to`` wandb or mlflow).
    tracker_project: str = "mmit"
    #: The run's name in wandb / mlflow; empty: the output folder's name.
    run_name: str = ""
    #: Show a progress bar (loss, lr, tokens/s, ETA).
    progress_bar: bool = True
    #: LoRA / QLoRA adapters on the LLM (:class:`~mmit.config.lora.LoRAConfig`); off by default.
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class RunConfig:
    #: Model family (``mmit.families.FAMILIES``): ``llava``, ``instructblip``, ``instructpix2pix``, ...
    family: str = DEFAULT_FAMILY
    #: The family's model config (:class:`FamilyConfig` subclass registered under ``family``).
    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model is None:
            self.model = family_config_class(self.family)()

    @classmethod
    def for_family(cls, family: str) -> "RunConfig":
        """A config with every default of ``family`` (an instance of :func:`run_config_class`)."""
        return run_config_class(family)(family=family)


_RUN_CLASSES: Dict[str, type] = {}


def family_config_class(family: str) -> type:
    """The ``model:`` dataclass of ``family``. Raises :class:`~mmit.registry.UnknownNameError`."""
    from mmit.families import get_family_class

    return get_family_class(family).config_class


def run_config_class(family: str) -> type:
    """``RunConfig`` whose ``model`` field is typed as ``family``'s config dataclass (what draccus
    parses a YAML of that family into). Cached; picklable (a module attribute)."""
    if family not in _RUN_CLASSES:
        mcls = family_config_class(family)
        name = f"RunConfig_{family.replace('-', '_')}"
        cls = dataclasses.make_dataclass(name, [("model", mcls, field(default_factory=mcls))], bases=(RunConfig,),
                                         namespace={"__doc__": f"RunConfig of the {family!r} family."})
        cls.__module__ = __name__
        globals()[name] = cls
        _RUN_CLASSES[family] = cls
    return _RUN_CLASSES[family]


def _family_of(d: Dict[str, Any], args: Sequence[str]) -> str:
    family = d.get("family") or DEFAULT_FAMILY
    for i, a in enumerate(args):
        if a.startswith("--family="):
            family = a.split("=", 1)[1]
        elif a == "--family" and i + 1 < len(args):
            family = args[i + 1]
    return str(family)


def migrate_legacy(d: Dict[str, Any], family: str) -> Tuple[Dict[str, Any], List[str]]:
    """A config dict written before the family split -> the current layout, and notes saying what moved.

    Such a dict has a top-level ``diffusion`` section (every old ``config.yaml`` has one). For
    ``instructpix2pix`` that section becomes ``model``; for other families it is dropped, and so are
    ``model`` keys the family's config does not have (the Q-Former section of a LLaVA run, ...).
    A dict without ``diffusion`` is returned unchanged.
    """
    if "diffusion" not in d:
        return d, []
    d = dict(d)
    notes = []
    diffusion = d.pop("diffusion")
    if family == "instructpix2pix":
        notes.append("moved the 'diffusion' section to 'model' (write InstructPix2Pix settings under model:)")
        if d.get("model"):
            notes.append(f"dropped the unused 'model' keys {sorted(d['model'])}")
        d["model"] = diffusion or {}
        return d, notes
    notes.append("dropped the 'diffusion' section (only family instructpix2pix reads it)")
    known = {f.name for f in dataclasses.fields(family_config_class(family))}
    model = dict(d.get("model") or {})
    extra = sorted(k for k in model if k not in known)
    if extra:
        notes.append(f"dropped model keys that family {family!r} does not have: {extra}")
        d["model"] = {k: v for k, v in model.items() if k in known}
    return d, notes


def _load(config_path: Optional[str], args: Sequence[str], allow_include: bool, what: str
          ) -> Tuple[RunConfig, List[str], List[str]]:
    """``(cfg, asked, cli_keys)``: the config; the dotted ``trust_remote_code`` keys the file set to
    true (dropped: :mod:`mmit.config.remote_code`); the keys the command line set."""
    from mmit.config.remote_code import pop_trust_requests
    from mmit.config.yamlio import read_yaml
    from mmit.families import get_family_class

    where = f"{config_path}: " if config_path else ""
    d: Dict[str, Any] = {}
    if config_path is not None:
        d = read_yaml(config_path, allow_include=allow_include, what=what) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{where}the config must be a mapping of sections, got {type(d).__name__}")
    family = _family_of(d, args)
    fam_cls = get_family_class(family)
    d, notes = migrate_legacy(d, family)
    if notes:
        log.warning("%sconfig written before the family split: %s", where, "; ".join(notes))
    asked = pop_trust_requests(d)
    check_keys(run_config_class(family), d, args, config_path)
    parser = _DataArgumentParser(run_config_class(family), d)
    try:
        cfg = parser.parse_args(list(args))
    except (draccus.utils.DecodingError, draccus.utils.DraccusException, argparse.ArgumentError) as e:
        raise ValueError(f"{where}{e}") from None
    if cfg.train.stage not in fam_cls.stages:
        raise ValueError(f"{where}train.stage {cfg.train.stage!r}: family {family!r} has the stages "
                         f"{', '.join(fam_cls.stages)}")
    return cfg, asked, parser.cli_keys


def load_config(config_path: Optional[str] = None, args: Sequence[str] = (), *, allow_include: bool = True,
                check: bool = True) -> RunConfig:
    """Read ``config_path`` (YAML) and apply ``--a.b=c`` overrides into the family's RunConfig class.

    The file is data (:func:`mmit.config.yamlio.read_yaml`): PyYAML's safe loader, Python and custom
    tags refused; ``!include FILE`` (relative to the file) only with ``allow_include`` (a user's own
    config; :func:`load_checkpoint_config` refuses it). ``trust_remote_code`` keys in the file are
    dropped with a warning: only an override in ``args`` (the command line) allows custom model code
    (:mod:`mmit.config.remote_code`).

    Args:
        config_path: the YAML file, or None for defaults and ``args`` only.
        args: ``--section.field=value`` overrides (values read as YAML, safe tags only).
        allow_include: accept ``!include`` in the file.

    ``config_path`` may also name a shipped config (``llava/tiny_demo``,
    :func:`mmit.config.shipped.resolve_config_path`) when no such file exists. With ``check`` every
    value is checked before anything is built (:func:`mmit.config.validate.check_values`: ranges,
    registry names, local paths, optional packages).

    Raises ``ValueError`` naming the file and the offending key for unknown keys (with "did you mean",
    also for LLaVA's and LLaMA-Factory's flag names: :mod:`mmit.config.suggest`), bad values or a
    stage the family does not have, naming file, line and column for YAML errors and refused tags
    (never quoting another file's content), :class:`~mmit.registry.UnknownNameError` for an unknown
    family (with close matches), and ``FileNotFoundError`` for a missing file.
    """
    if config_path is not None:
        from mmit.config.shipped import resolve_config_path

        config_path = resolve_config_path(config_path)
    cfg, asked, cli_keys = _load(config_path, args, allow_include, "this config")
    if check:
        from mmit.config.validate import check_values
        from mmit.families import get_family_class

        try:
            check_values(cfg, get_family_class(cfg.family).stages)
        except ValueError as e:
            raise ValueError(f"{config_path + ': ' if config_path else ''}{e}") from None
    try:
        parse_report_to(cfg.train.report_to)
    except ValueError as e:
        raise ValueError(f"{config_path or 'command line'}: {e}") from None
    ignored = [k for k in asked if k not in cli_keys]
    if ignored:
        log.warning("%s: ignored %s: a config file cannot allow custom model code; to run it, pass %s on the "
                    "command line", config_path, ", ".join(f"{k}: true" for k in ignored),
                    " ".join(f"--{k}=true" for k in ignored))
    return cfg


def load_checkpoint_config(path: str | Path, trust_remote_code: bool = False) -> RunConfig:
    """The config of a checkpoint (its ``config.yaml``), read as data.

    Custom YAML tags (``!include`` included) and Python tags are refused, and every
    ``trust_remote_code`` field is set to ``trust_remote_code``, the caller's (``mmit generate`` /
    ``mmit eval --trust-remote-code``) whatever the file says; a file that asked for it is named in a
    warning. Relative path fields are not resolved here (:func:`mmit.config.paths.absolutise`).

    Args:
        path: the checkpoint's ``config.yaml``.
        trust_remote_code: allow the model folders the config names to run their own code.

    Returns the family's RunConfig. Raises ``ValueError`` (naming the file and, for a refused tag, the
    tag and its line and column, never an include target or another file's content; bad keys or
    values), ``FileNotFoundError`` and :class:`~mmit.registry.UnknownNameError` as :func:`load_config`.
    """
    from mmit.config.remote_code import set_trust_remote_code

    path = str(path)
    cfg, asked, _ = _load(path, (), False, "a checkpoint config")
    set_trust_remote_code(cfg, trust_remote_code)
    if asked and not trust_remote_code:
        log.warning("%s: ignored %s: a checkpoint cannot allow custom model code; pass --trust-remote-code "
                    "(mmit generate / mmit eval) to allow it", path, ", ".join(f"{k}: true" for k in asked))
    elif trust_remote_code:
        log.warning("%s: custom model code allowed by the caller (--trust-remote-code)", path)
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as plain YAML (round-trips through :func:`load_config` and
    :func:`load_checkpoint_config`). Raises ``yaml.representer.RepresenterError`` for a value that is
    not plain data."""
    if type(cfg) is RunConfig:  # RunConfig(): give draccus the family's typed class
        cfg = run_config_class(cfg.family)(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:  # plain YAML only (safe_dump): what load_checkpoint_config accepts
        yaml.safe_dump(_plain(draccus.encode(cfg)), f)


def _plain(x: Any) -> Any:
    """``x`` with tuples as lists (safe YAML has no tuple)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
