"""The ``instructpix2pix`` model family (arXiv 2211.09800) for the shared trainer.

``family: instructpix2pix`` in a run config selects it; its settings are the config's ``model`` section
(:class:`~mmit.families.instructpix2pix.config.InstructPix2PixConfig`). Only the UNet trains (stage
``finetune``); the VAE and text encoder are frozen. With ``model.use_ema`` the family
keeps a diffusers ``EMAModel`` of the UNet, updated after every optimizer step and written into every
checkpoint as ``ema_unet.safetensors`` + ``ema_unet.json``; ``mmit edit`` and the diffusers export use
the EMA weights when present (as the diffusers example saves them into its pipeline).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

from mmit.families.base import ModelFamily
from mmit.families.instructpix2pix.config import InstructPix2PixConfig

log = logging.getLogger("mmit.diffusion")

EMA_WEIGHTS = "ema_unet.safetensors"
EMA_STATE = "ema_unet.json"


def new_ema(model, decay: float):
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


def load_ema(model, ckpt_dir: Path, decay: float):
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

    config_class = InstructPix2PixConfig
    stages = ("finetune",)
    unit = "images"
    generates_text = False
    exporters = {"diffusers-instructpix2pix": "mmit.families.instructpix2pix.export:export_diffusers_instructpix2pix"}
    commands = {"edit": "mmit.families.instructpix2pix.cli:edit_main"}

    def build(self, cfg, dtype: torch.dtype = torch.float32):
        """``(InstructPix2PixModel, CLIPTokenizer)``; writes nothing."""
        from mmit.families.instructpix2pix.model import build_model

        return build_model(cfg.model, dtype)

    def prepare_data(self, cfg) -> None:
        """With ``model.procedural_triples > 0`` and no shards at ``data.path`` yet, write that many
        procedural edit triples there (the tiny demo)."""
        d = cfg.model
        if d.procedural_triples > 0 and cfg.data.format == "shards" and cfg.data.path:
            if not os.path.isfile(os.path.join(cfg.data.path, "_stats.json")):
                from mmit.families.instructpix2pix.triples import write_triples

                stats = write_triples(cfg.data.path, d.procedural_triples, size=max(d.resolution, 32) * 2,
                                      seed=cfg.train.seed)
                log.info("wrote %d procedural edit triples to %s", stats["written"], cfg.data.path)

    def prepare_for_training(self, model, cfg):
        """Create the EMA of the UNet (after ``model.init_from`` was loaded)."""
        if cfg.model.use_ema and model.ema is None:
            model.ema = new_ema(model, cfg.model.ema_decay)

    def trainable_modules(self, cfg):
        """Stage ``finetune``: the UNet trains, the VAE and text encoder are frozen (arXiv 2211.09800)."""
        return {"unet": True, "vae": False, "text_encoder": False}

    def processor(self, cfg, model, tokenizer):
        from mmit.families.instructpix2pix.data import EditProcessor

        d = cfg.model
        return EditProcessor(tokenizer, d.resolution, d.center_crop, d.random_flip, cfg.data.overflow)

    def loss(self, model, batch):
        """Noise-prediction MSE with conditioning dropout (:meth:`InstructPix2PixModel.forward`)."""
        return model(batch.values("image"), batch.extra["edited_pixel_values"], batch.input_ids)["loss"]

    def count(self, batch) -> int:
        """Edit pairs in the batch."""
        return batch.size

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

    def load_extra(self, model, ckpt_dir: Path, cfg) -> None:
        """Restore the EMA state (weights stay the trained ones; :func:`~mmit.families.instructpix2pix.pipeline.load_editor`
        copies the EMA weights in for inference)."""
        ema = load_ema(model, Path(ckpt_dir), cfg.model.ema_decay)
        if ema is not None:
            model.ema = ema
