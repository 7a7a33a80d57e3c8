""""Did you mean" for unknown config keys, including the flag names of LLaVA and LLaMA-Factory.

People arrive with the habits of other toolkits: LLaVA's ``llava/train/train.py`` (``--data_path``,
``--image_folder``, ``--vision_tower``, ``--mm_projector_type``, ``--lora_enable``, HF ``Trainer``
flags such as ``--per_device_train_batch_size``) and LLaMA-Factory's ``llamafactory-cli train``
(``--dataset``, ``--template``, ``--finetuning_type``, ``--cutoff_len``, ``--lora_rank``). An unknown
key is checked against :data:`ALIASES` (those names mapped to mmit's dotted fields), then against
mmit's own fields by their last part (``--max_steps`` -> ``--train.max_steps``) and by spelling.
"""

from __future__ import annotations

import difflib
from typing import Dict, Iterable, List, Optional, Sequence

#: Other toolkits' flag -> what to write in mmit (a dotted field, optionally with its value).
#: ``L`` = LLaVA (``llava/train/train.py``), ``F`` = LLaMA-Factory (``hparams/*_args.py``),
#: ``HF`` = transformers ``TrainingArguments`` (both use it).
ALIASES: Dict[str, str] = {
    # LLaVA ModelArguments / DataArguments / TrainingArguments (L)
    "data_path": "data.path",
    "image_folder": "data.media_root",
    "model_name_or_path": "model.llm.name_or_path",
    "vision_tower": "model.vision_tower.name (or model.vision_tower.name_or_path for a folder)",
    "mm_vision_select_layer": "model.vision_tower.select_layer",
    "mm_vision_select_feature": "model.vision_tower.select_feature",
    "image_aspect_ratio": "model.vision_tower.image_aspect_ratio",
    "mm_projector_type": "model.projector.name (mlp2x_gelu is mlp2x-gelu)",
    "pretrain_mm_mlp_adapter": "model.init_from",
    "tune_mm_mlp_adapter": "train.stage=align",
    "freeze_backbone": "train.stage=align",
    "version": "model.template (LLaVA's v1 is vicuna-v1, plain is plain)",
    "model_max_length": "model.max_length",
    "group_by_modality_length": "data.group_by_modality_length",
    "lazy_preprocess": "(nothing: mmit always reads lazily)",
    "is_multimodal": "(nothing: set by the family)",
    "mm_projector_lr": "train.projector_lr",
    "lora_enable": "train.lora.enabled=true",
    "lora_r": "train.lora.r",
    "lora_alpha": "train.lora.alpha",
    "lora_dropout": "train.lora.dropout",
    "lora_bias": "train.lora.bias",
    "bits": "train.lora.quantize=4bit (with train.lora.enabled=true)",
    "double_quant": "train.lora.double_quant",
    "quant_type": "train.lora.quant_type",
    # transformers TrainingArguments (HF)
    "output_dir": "train.output_dir",
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "learning_rate": "train.lr",
    "weight_decay": "train.weight_decay",
    "warmup_ratio": "train.warmup_ratio",
    "lr_scheduler_type": "train.lr_scheduler",
    "max_grad_norm": "train.max_grad_norm",
    "adam_epsilon": "train.adam_eps",
    "logging_steps": "train.logging_steps",
    "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
    "bf16": "train.precision=bf16",
    "fp16": "train.precision=fp16",
    "tf32": "(nothing: precision is train.precision)",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "dataloader_num_workers": "data.num_workers",
    "report_to": "train.report_to",
    "resume_from_checkpoint": "--resume (mmit train --resume continues the latest checkpoint in train.output_dir)",
    "deepspeed": "accelerate launch --config_file configs/accelerate/zero2.yaml -m mmit.cli train ...",
    # LLaMA-Factory (F)
    "dataset": "data.path (a shard folder or a LLaVA-style JSON file)",
    "dataset_dir": "data.path",
    "media_dir": "data.media_root",
    "image_dir": "data.media_root",
    "template": "model.template",
    "finetuning_type": "train.lora.enabled=true for lora; train.stage=finetune|full for full; train.stage=align to "
                       "train the projector only",
    "cutoff_len": "model.max_length",
    "lora_rank": "train.lora.r",
    "lora_target": "train.lora.target_modules",
    "quantization_bit": "train.lora.quantize=4bit (with train.lora.enabled=true)",
    "freeze_vision_tower": "model.vision_tower.frozen",
    "train_mm_proj_only": "train.stage=align",
    "preprocessing_num_workers": "data.num_workers",
    "flash_attn": "model.llm.attn_implementation",
    "packing": "data.packing",
    "stage": "train.stage (align, finetune or full)",
}


def _leaf_index(known: Iterable[str]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for k in known:
        out.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    return out


def _best(word: str, choices: Sequence[str]) -> List[str]:
    """The closest of ``choices`` to ``word`` (ratio >= 0.6), and any within 0.03 of the best."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in choices), reverse=True)
    if not scored or scored[0][0] < 0.6:
        return []
    return [c for r, c in scored[:3] if r >= scored[0][0] - 0.03]


def suggest(key: str, known: Sequence[str]) -> Optional[str]:
    """What to write instead of the unknown dotted ``key`` (``data_path``, ``train.max_stepss``), or
    None. ``known`` holds the valid dotted names (fields and sections)."""
    bare = key.replace("-", "_")
    last = bare.rsplit(".", 1)[-1]
    alias = bare if bare in ALIASES else last if last in ALIASES else None
    if alias is not None:
        target = ALIASES[alias]
        return target if target.startswith(("(", "--", "accelerate")) else f"--{target}"
    leaves = _leaf_index(known)
    if last in leaves:
        return " or ".join(f"--{k}" for k in leaves[last])
    close = _best(bare, known)
    if close:
        return " or ".join(f"--{k}" for k in close)
    close = difflib.get_close_matches(last, list(leaves), n=2, cutoff=0.75)
    if close:
        return " or ".join(f"--{k}" for c in close for k in leaves[c])
    return None


def unknown_key_message(keys: Sequence[str], known: Sequence[str], where: str = "") -> str:
    """One line naming each unknown key with its suggestion (from the command line when ``where`` is
    empty, else from that file)."""
    parts = []
    for k in keys:
        s = suggest(k, known)
        parts.append(f"{k!r}" + (f" (did you mean {s}?)" if s else ""))
    origin = where or "the command line"
    return (f"unknown config key{'s' if len(keys) > 1 else ''} in {origin}: {'; '.join(parts)}. "
            "Keys are section.field (`mmit train --help` lists them all)")


def flat_keys(d: dict, prefix: str = "") -> List[str]:
    """Dotted names of the leaves and sections of a nested dict (a config file's data)."""
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.append(name)
        if isinstance(v, dict):
            out.extend(flat_keys(v, name + "."))
    return out
