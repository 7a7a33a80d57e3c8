"""LoRA and QLoRA adapters on a family's LLM (``model.llm``) through peft.

Training (:func:`apply_lora`, called by the trainer right after ``family.prepare_for_training``): the
adapters are injected into ``model.llm`` in place with ``peft.inject_adapter_in_model``, so ``model.llm``
stays the family's transformers model (``generate``, ``get_decoder``, the inference contract, the
parameter names of everything but the wrapped layers are unchanged). A wrapped ``nn.Linear`` named
``X`` becomes a peft layer with ``X.base_layer`` (the frozen weight) and ``X.lora_A`` / ``X.lora_B``.
The LLM's own weights that the stage would train are frozen; the stage's other modules (LLaVA's
projector, a Q-Former) train as before; parameters inside the LLM that the family unfroze while the
stage froze the LLM (Flamingo's new token rows in ``align``) keep training.

With ``train.lora.quantize: 4bit`` (QLoRA, arXiv 2305.14314) every ``nn.Linear`` of the LLM but its
output head is first replaced by a bitsandbytes ``Linear4bit`` (NF4, double quantization) on the GPU.

Checkpoints (:mod:`mmit.training.checkpoint`): the adapters go to ``<ckpt>/llm_adapter/`` in peft's
format (``adapter_model.safetensors`` with ``base_model.model.``-prefixed keys and
``adapter_config.json``; ``peft.PeftModel.from_pretrained(<the LLM>, <ckpt>/llm_adapter)`` reads it);
``model.safetensors`` holds the other weights that train, under the names of the model without
adapters. :func:`load_adapter` re-applies them (loading never quantizes: a QLoRA checkpoint loads on the
full-precision base weights, as merging does). :func:`merge_lora` folds them into the base weights
(peft's ``merge_and_unload``, layer by layer) for ``mmit export --merge-lora``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn

log = logging.getLogger("mmit.lora")

#: Checkpoint subfolder holding the LLM's adapters (peft's format).
ADAPTER_DIR = "llm_adapter"
ADAPTER_NAME = "default"
#: Key prefix of peft's saved adapters (``PeftModel.save_pretrained``: ``base_model.model.<LLM name>``).
PEFT_PREFIX = "base_model.model."
_BASE = ".base_layer"


class QLoRAUnavailableError(ValueError):
    """``train.lora.quantize: 4bit`` on a machine that cannot run it (no CUDA GPU, or bitsandbytes not
    installed); the message is one line naming what is needed."""


def _peft():
    try:
        import peft
    except ImportError:  # a dependency of mmit; a broken environment gets one line
        raise ImportError("train.lora needs peft: pip install 'peft>=0.13'") from None
    return peft


def _llm(model: nn.Module) -> nn.Module:
    llm = getattr(model, "llm", None)
    if not isinstance(llm, nn.Module):
        raise ValueError(f"LoRA adapters go on the model's LLM (model.llm); {type(model).__name__} has none")
    return llm


def target_linear_names(llm: nn.Module, pattern: str = "") -> List[str]:
    """Dotted names (inside ``llm``) of the ``nn.Linear`` layers that get adapters.

    ``pattern`` empty: every ``nn.Linear`` except the output head (``llm.get_output_embeddings()``), as
    LLaVA's ``find_all_linear_names``. Otherwise a regular expression that must ``re.fullmatch`` the
    layer's dotted name or its last part. Raises ``ValueError`` for a bad regular expression or one that
    matches no linear layer (the message shows some layer names)."""
    head = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    linears = [(n, m) for n, m in llm.named_modules() if isinstance(m, nn.Linear) and n]
    if not pattern:
        names = [n for n, m in linears if m is not head]
    else:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"train.lora.target_modules {pattern!r} is not a regular expression: {e}") from None
        names = [n for n, _ in linears if rx.fullmatch(n) or rx.fullmatch(n.rpartition(".")[2])]
    if not names:
        seen = sorted({n.rpartition(".")[2] for n, _ in linears})
        raise ValueError(f"train.lora.target_modules {pattern!r} matches no linear layer of the LLM "
                         f"(its linear layers end in {seen[:12]})")
    return names


def peft_lora_config(lcfg, targets: List[str], base_model: str = ""):
    """peft ``LoraConfig`` of a ``train.lora`` section (:class:`~mmit.config.lora.LoRAConfig`) for the
    layers ``targets``. Raises ``ValueError`` for ``r``/``alpha`` < 1 or ``dropout`` outside [0, 1)."""
    if lcfg.r < 1 or lcfg.alpha < 1:
        raise ValueError(f"train.lora.r and train.lora.alpha must be >= 1 (got r={lcfg.r}, alpha={lcfg.alpha})")
    if not 0.0 <= lcfg.dropout < 1.0:
        raise ValueError(f"train.lora.dropout must be in [0, 1) (got {lcfg.dropout})")
    return _peft().LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, bias=lcfg.bias,
                              target_modules=list(targets), base_model_name_or_path=base_model or None)


def check_qlora_available() -> None:
    """Raise :class:`QLoRAUnavailableError` unless a CUDA GPU and bitsandbytes are there."""
    if not torch.cuda.is_available():
        raise QLoRAUnavailableError("train.lora.quantize=4bit (QLoRA) needs a CUDA GPU and bitsandbytes "
                                    "(pip install 'mmit[qlora]'); this machine has no CUDA device: use "
                                    "train.lora.quantize=none for LoRA on full-precision weights")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise QLoRAUnavailableError("train.lora.quantize=4bit (QLoRA) needs bitsandbytes, which is not "
                                    "installed: pip install 'mmit[qlora]'") from None


def _compute_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def quantize_linear_4bit(llm: nn.Module, lcfg, compute_dtype: torch.dtype) -> int:
    """Replace every ``nn.Linear`` of ``llm`` except the output head by a frozen bitsandbytes
    ``Linear4bit`` (``lcfg.quant_type``, ``lcfg.double_quant``), quantized on the current CUDA device.
    Returns the number of layers replaced. Needs :func:`check_qlora_available`."""
    import bitsandbytes as bnb

    head = llm.get_output_embeddings()
    device = torch.device("cuda", torch.cuda.current_device())
    n = 0
    for name, mod in list(llm.named_modules()):
        if type(mod) is not nn.Linear or mod is head or not name:
            continue
        q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=lcfg.double_quant,
                              quant_type=lcfg.quant_type, device="meta")
        weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False, compress_statistics=lcfg.double_quant,
                                   quant_type=lcfg.quant_type, module=q)
        q.weight = weight.to(device)  # Params4bit quantizes when it moves to the GPU
        if mod.bias is not None:
            q.bias = nn.Parameter(mod.bias.data.to(device), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent_name) if parent_name else llm, child, q)
        n += 1
    return n


def apply_lora(model: nn.Module, cfg, trains: Mapping[str, bool]) -> bool:
    """The training hook: put the ``cfg.train.lora`` adapters on ``model.llm`` (nothing when disabled).

    Called after the stage's freezing (``trains``: the family's ``trainable_modules``, as applied) and
    ``family.prepare_for_training``. Returns whether adapters were added. Raises ``ValueError`` for a
    family without ``model.llm``, bad settings, a ``target_modules`` that matches nothing, or ``quantize``
    without ``enabled``; :class:`QLoRAUnavailableError` for QLoRA on a machine that cannot run it."""
    lcfg = cfg.train.lora
    if not lcfg.enabled:
        if lcfg.quantize != "none":
            raise ValueError("train.lora.quantize needs train.lora.enabled=true (QLoRA trains LoRA adapters)")
        return False
    llm = _llm(model)
    if lcfg.quantize == "4bit":
        check_qlora_available()
    targets = target_linear_names(llm, lcfg.target_modules)
    config = peft_lora_config(lcfg, targets, getattr(getattr(cfg.model, "llm", None), "name_or_path", ""))
    # What keeps training inside the LLM: nothing when the stage trains the LLM (LoRA replaces that), else
    # what the family unfroze on purpose in prepare_for_training.
    keep = set() if trains.get("llm") else {n for n, p in llm.named_parameters() if p.requires_grad}
    if lcfg.quantize == "4bit":
        n = quantize_linear_4bit(llm, lcfg, _compute_dtype(cfg.train.precision))
        log.info("QLoRA: %d linear layers of the LLM quantized to 4 bits (%s)", n, lcfg.quant_type)
    _peft().inject_adapter_in_model(config, llm, adapter_name=ADAPTER_NAME)
    adapters = adapter_parameter_names(model)
    for name, p in model.llm.named_parameters():
        full = "llm." + name
        p.requires_grad_(full in adapters or (_BASE not in name and name in keep))
    n_ad = sum(p.numel() for n, p in model.named_parameters() if n in adapters)
    log.info("LoRA: r=%d alpha=%d dropout=%g on %d linear layers of the LLM (%d adapter parameters)",
             lcfg.r, lcfg.alpha, lcfg.dropout, len(targets), n_ad)
    return True


def lora_layers(module: nn.Module) -> Dict[str, nn.Module]:
    """``name -> peft tuner layer`` for every adapter-wrapped layer inside ``module``."""
    if "peft" not in sys.modules:  # no adapter can exist before peft is imported; spares the import
        return {}
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def has_lora(model: nn.Module) -> bool:
    """Whether ``model.llm`` carries adapters."""
    llm = getattr(model, "llm", None)
    return isinstance(llm, nn.Module) and bool(lora_layers(llm))


def adapter_parameter_names(model: nn.Module) -> set:
    """Full names (``llm.<layer>.lora_A.default.weight``, ...) of the adapter parameters of ``model``."""
    llm = getattr(model, "llm", None)
    if not isinstance(llm, nn.Module):
        return set()
    return {f"llm.{ln}.{pn}" for ln, layer in lora_layers(llm).items()
            for pn, _ in layer.named_parameters() if not pn.startswith("base_layer.")}


def plain_name(name: str) -> str:
    """The name a parameter has without adapters (``q_proj.base_layer.weight`` -> ``q_proj.weight``)."""
    return name.replace(_BASE + ".", ".")


def base_aliases(model: nn.Module) -> Dict[str, str]:
    """``plain name -> name in model`` for every parameter and buffer under an adapter's ``base_layer``."""
    if not has_lora(model):
        return {}
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return {plain_name(n): n for n in names if _BASE + "." in n}


def split_adapter_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]
                          ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """``weights`` (model names) -> ``(adapter state dict in peft's format, the rest under plain names)``.
    Without adapters: ``({}, weights)``."""
    adapters = adapter_parameter_names(model)
    if not adapters:
        return {}, dict(weights)
    peft_sd = _peft().get_peft_model_state_dict(
        model.llm, state_dict={k[4:]: v for k, v in weights.items() if k in adapters}, adapter_name=ADAPTER_NAME,
        save_embedding_layers=False)  # embeddings are never targets; "auto" would read the base model's config
    rest = {plain_name(k): v for k, v in weights.items() if k not in adapters}
    return {PEFT_PREFIX + k: v.contiguous() for k, v in peft_sd.items()}, rest


def save_adapter(model: nn.Module, folder: str | Path, adapter_sd: Mapping[str, torch.Tensor]) -> Path:
    """Write ``adapter_sd`` (from :func:`split_adapter_weights`) and the adapter config into ``folder``
    as peft does (``adapter_model.safetensors``, ``adapter_config.json``). Returns ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.llm.peft_config[ADAPTER_NAME].save_pretrained(str(folder))
    save_file(dict(adapter_sd), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def _read_config(folder: Path):
    peft = _peft()
    try:
        raw = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: unreadable adapter_config.json ({e})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: adapter_config.json is not a LoRA adapter (peft_type "
                         f"{raw.get('peft_type') if isinstance(raw, dict) else None!r})")
    config = peft.LoraConfig.from_pretrained(str(folder))
    config.init_lora_weights = True  # the saved weights replace the initial ones; never touch the base
    config.inference_mode = False
    return config


def load_adapter(model: nn.Module, ckpt_dir: str | Path, inject: bool = True) -> int:
    """Load ``<ckpt_dir>/llm_adapter`` into ``model.llm``. A model without adapters gets them first from
    the folder's ``adapter_config.json`` when ``inject`` (a checkpoint load); the trainer passes
    ``inject=False``, its adapters come from ``train.lora``. Returns the number of adapter tensors
    loaded, 0 when the checkpoint has no adapter folder.

    Raises ``ValueError``, naming the folder, when the model carries adapters but the checkpoint has none
    or (``inject=False``) the other way round (resuming with other ``train.lora.enabled`` than the run
    had), or when the file's tensors do not match the model's adapters (other layers, other rank)."""
    from safetensors.torch import load_file

    folder = Path(ckpt_dir) / ADAPTER_DIR
    if not (folder / "adapter_config.json").is_file():
        if has_lora(model):
            raise ValueError(f"{ckpt_dir}: no LoRA adapters ({ADAPTER_DIR}/) in the checkpoint, but "
                             "train.lora.enabled is set: resume with the run's own train.lora settings")
        return 0
    llm = _llm(model)
    if not has_lora(model):
        if not inject:
            raise ValueError(f"{ckpt_dir}: the checkpoint holds LoRA adapters ({ADAPTER_DIR}/) but "
                             "train.lora.enabled is false: resume with the run's own train.lora settings")
        _peft().inject_adapter_in_model(_read_config(folder), llm, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    sd = load_file(str(folder / "adapter_model.safetensors"))
    sd = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in sd.items()}
    result = _peft().set_peft_model_state_dict(llm, sd, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    missing = sorted(k for k in result.missing_keys if "lora_" in k)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(f"{folder}: adapters do not match the model's (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}): other target_modules or rank than this run's train.lora")
    return len(sd)


def merge_lora(model: nn.Module, safe: bool = True) -> List[str]:
    """Fold the adapters into the base weights and remove them (peft's ``merge_and_unload``, layer by
    layer): ``model.llm`` is again the plain transformers model. Returns the full names
    (``llm.<layer>``) of the merged layers, [] without adapters. With ``safe`` a merge producing NaNs
    raises ``ValueError`` (peft)."""
    llm = getattr(model, "llm", None)
    if not isinstance(llm, nn.Module):
        return []
    done = []
    for name, layer in lora_layers(llm).items():
        if any(name.startswith(d + ".") for d in done):
            continue
        layer.merge(safe_merge=safe)
        parent_name, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent_name) if parent_name else llm, child, layer.get_base_layer())
        done.append(name)
    if hasattr(llm, "peft_config"):
        del llm.peft_config
    return ["llm." + n for n in done]
