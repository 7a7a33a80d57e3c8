"""The ``instructpix2pix`` model family (arXiv 2211.09800) for the shared trainer.

``family: instructpix2pix`` in a run config selects it; its settings are the config's ``diffusion``
section (:class:`~mmit.config.schema.DiffusionConfig`), the ``model`` section is unused. Only the UNet
trains (stage ``finetune``); the VAE and text encoder are frozen. With ``diffusion.use_ema`` the family
keeps a diffusers ``EMAModel`` of the UNet, updated after every optimizer step and written into every
checkpoint as ``ema_unet.safetensors`` + ``ema_unet.json``; ``mmit edit`` and the diffusers export use
the EMA weights when present (as the diffusers example saves them into its pipeline).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List

import torch
from safetensors.torch import load_file, save_file

from mmit.diffusion.data import EditPreprocessor, collate_edits
from mmit.diffusion.model import InstructPix2PixModel, build_model
from mmit.families.base import ModelFamily

log = logging.getLogger("mmit.diffusion")

EMA_WEIGHTS = "ema_unet.safetensors"
EMA_STATE = "ema_unet.json"


def new_ema(model: InstructPix2PixModel, decay: float):
    """A diffusers ``EMAModel`` over the UNet's parameters (a copy of their current values)."""
    from diffusers.training_utils import EMAModel

    return EMAModel(model.unet.parameters(), decay=decay, model_cls=type(model.unet), model_config=model.unet.config)


def save_ema(ema, unet, ckpt_dir: Path) -> None:
    """Shadow weights keyed by UNet parameter name (safetensors) and the EMA counters (JSON)."""
    names = [n for n, _ in unet.named_parameters()]
    save_file({n: p.detach().to("cpu").contiguous() for n, p in zip(names, ema.shadow_params)},
              str(Path(ckpt_dir) / EMA_WEIGHTS), metadata={"format": "pt"})
    state = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    (Path(ckpt_dir) / EMA_STATE).write_text(json.dumps(state, indent=1))


def load_ema(model: InstructPix2PixModel, ckpt_dir: Path, decay: float = 0.9999):
    """The EMA saved by :func:`save_ema` in ``ckpt_dir``, or None if there is none. Raises ``KeyError``
    naming the file when a UNet parameter is missing from it."""
    path = Path(ckpt_dir) / EMA_WEIGHTS
    if not path.is_file():
        return None
    sd = load_file(str(path))
    missing = [n for n, _ in model.unet.named_parameters() if n not in sd]
    if missing:
        raise KeyError(f"{path}: {len(missing)} UNet parameter(s) missing, e.g. {missing[:3]}")
    ema = new_ema(model, decay)
    state = json.loads((Path(ckpt_dir) / EMA_STATE).read_text()) if (Path(ckpt_dir) / EMA_STATE).is_file() else {}
    state["shadow_params"] = [sd[n].to(p.device, p.dtype) for n, p in model.unet.named_parameters()]
    state.setdefault("decay", decay)
    ema.load_state_dict(state)
    return ema


class InstructPix2PixFamily(ModelFamily):
    """Hooks for :func:`mmit.training.trainer.train`; see the module docstring."""

    unit = "images"

    def __init__(self):
        self._use_ema, self._ema_decay = False, 0.9999

    def build(self, cfg, dtype: torch.dtype = torch.float32):
        """``(InstructPix2PixModel, CLIPTokenizer)``. With ``diffusion.procedural_triples > 0`` and no
        shards at ``data.path`` yet, first writes that many procedural triples there."""
        d = cfg.diffusion
        self._use_ema, self._ema_decay = d.use_ema, d.ema_decay
        if d.procedural_triples > 0 and cfg.data.format == "shards" and cfg.data.path:
            if not os.path.isfile(os.path.join(cfg.data.path, "_stats.json")):
                from mmit.diffusion.triples import write_triples

                stats = write_triples(cfg.data.path, d.procedural_triples, size=max(d.resolution, 32) * 2,
                                      seed=cfg.train.seed)
                log.info("wrote %d procedural edit triples to %s", stats["written"], cfg.data.path)
        return build_model(d, dtype)

    def apply_stage(self, model, cfg):
        """Stage ``finetune`` (the default): the UNet trains, the VAE and text encoder are frozen.
        Creates the EMA here (after ``model.init_from`` was loaded). Raises ``ValueError`` otherwise."""
        if cfg.train.stage != "finetune":
            raise ValueError(f"train.stage {cfg.train.stage!r}: the instructpix2pix family has one stage, "
                             "'finetune' (UNet trains; VAE and text encoder stay frozen, arXiv 2211.09800)")
        model.unet.requires_grad_(True)
        model.vae.requires_grad_(False)
        model.text_encoder.requires_grad_(False)
        if cfg.diffusion.use_ema and model.ema is None:
            model.ema = new_ema(model, cfg.diffusion.ema_decay)
        return {"unet": True, "vae": False, "text_encoder": False}

    def parameter_modules(self, model) -> List[str]:
        return ["unet", "vae", "text_encoder"]

    def preprocessor(self, cfg, model, tokenizer):
        d = cfg.diffusion
        return EditPreprocessor(tokenizer, d.resolution, d.center_crop, d.random_flip, cfg.data.overflow)

    def collate(self, items: List[Dict[str, Any]], tokenizer) -> Dict[str, Any]:
        return collate_edits(items)

    def loss(self, model, batch):
        """Noise-prediction MSE with conditioning dropout (:meth:`InstructPix2PixModel.forward`)."""
        return model(batch["input_pixel_values"], batch["edited_pixel_values"], batch["input_ids"])["loss"]

    def count(self, batch) -> int:
        """Edit pairs in the batch."""
        return int(batch["input_ids"].shape[0])

    def on_step_end(self, model, step: int) -> None:
        """EMA update of the UNet weights (diffusers ``EMAModel.step``)."""
        if model.ema is None:
            return
        first = next(model.unet.parameters())
        if model.ema.shadow_params[0].device != first.device:
            model.ema.to(first.device)
        model.ema.step(model.unet.parameters())

    def save_extra(self, model, ckpt_dir: Path) -> None:
        if model.ema is not None:
            save_ema(model.ema, model.unet, Path(ckpt_dir))

    def load_extra(self, model, ckpt_dir: Path) -> None:
        """Restore the EMA state (weights stay the trained ones; :func:`mmit.diffusion.pipeline.load_editor`
        copies the EMA weights in for inference)."""
        ema = load_ema(model, Path(ckpt_dir), self._ema_decay)
        if ema is not None:
            model.ema = ema
