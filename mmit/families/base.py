"""The contract between the shared code (trainer, checkpoints, generation, evaluation, export) and
one model family. docs/architecture.md walks through adding a family.

Life-cycle, in the order the trainer calls the hooks:

1. :meth:`ModelFamily.build` constructs the architecture and its tokenizer from the config: pure (no
   file written, no training-only state, no pretrained weights that a checkpoint would replace).
   Loading a checkpoint is ``build`` + load weights + :meth:`~ModelFamily.load_extra`.
2. :meth:`~ModelFamily.prepare_data` (main process only, before any data is read).
3. :meth:`~ModelFamily.trainable_modules` names what trains in the stage; the trainer sets
   ``requires_grad`` (:func:`mmit.training.params.apply_trainable`), then calls
   :meth:`~ModelFamily.prepare_for_training` (pretrained initialisation, EMA, new token rows, later
   LoRA), and builds the optimizer from :meth:`~ModelFamily.param_groups` after ``accelerator.prepare``.
4. :meth:`~ModelFamily.processor` (a stateless :class:`~mmit.data.processor.Processor`: samples and
   prompts -> typed :class:`~mmit.data.batch.Batch`), then per micro-batch :meth:`~ModelFamily.loss`
   and :meth:`~ModelFamily.count`, per optimizer step :meth:`~ModelFamily.on_step_end`.
5. With every checkpoint: :meth:`~ModelFamily.checkpoint_config` (the config written into it) and
   :meth:`~ModelFamily.save_extra`.

The model a family builds is a :class:`~mmit.models.interface.MultimodalModel` (the inference
contract: ``prefill`` / ``extend`` / ``generate_tokens``) or, for a family that does not produce
text (diffusion), declares :attr:`ModelFamily.generates_text` False and its own commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn


class ModelFamily:
    """One family's hooks (module docstring). Subclasses set the class attributes and implement the
    methods that raise ``NotImplementedError``."""

    #: The ``model:`` config dataclass (registered with ``FamilyConfig.register_subclass(name)``).
    config_class: type = None  # type: ignore[assignment]
    #: ``train.stage`` values this family supports.
    stages: Tuple[str, ...] = ("align", "finetune", "full")
    #: The unit :meth:`count` returns, for ``<unit>_per_s`` in the metrics (``tokens``, ``images``).
    unit: str = "tokens"
    #: Whether the model produces text (``mmit generate``, ``mmit eval``).
    generates_text: bool = True
    #: ``format -> "module:function"``: ``mmit export`` writers (``function(checkpoint, output) -> Path``).
    exporters: Dict[str, str] = {}
    #: ``format -> "module:function"``: ``mmit import`` readers (``function(input, output, template) -> Path``).
    importers: Dict[str, str] = {}
    #: ``command -> "module:function"``: extra ``mmit`` commands (``function(argv) -> int``).
    commands: Dict[str, str] = {}

    # -- construction --------------------------------------------------------------------------------
    def build(self, cfg, dtype: torch.dtype = torch.float32) -> Tuple[nn.Module, Any]:
        """``(model, tokenizer)`` from a RunConfig; pure (module docstring). The tokenizer is saved with
        each checkpoint (``save_pretrained``)."""
        raise NotImplementedError

    def prepare_data(self, cfg) -> None:
        """Write data the run needs before it reads any (e.g. procedural samples). Main process only."""

    def prepare_for_training(self, model: nn.Module, cfg) -> None:
        """Training-only initialisation after ``model.init_from`` is loaded and the stage's modules are
        (un)frozen, before a resume loads its checkpoint: pretrained connector weights, EMA, adapters,
        trainable parts inside a frozen module."""

    def persistent_modules(self, cfg) -> Tuple[str, ...]:
        """Top-level modules written into every checkpoint even when frozen: their weights come from
        :meth:`prepare_for_training` (a pretrained initialisation), which loading a checkpoint does not
        run, so ``build`` alone cannot give them back. (Tensors loaded from ``model.init_from`` are kept
        the same way by the trainer.)"""
        return ()

    # -- what trains -----------------------------------------------------------------------------------
    def trainable_modules(self, cfg) -> Dict[str, bool]:
        """Top-level module name -> trains in ``cfg.train.stage`` (all modules, for the parameter table)."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, cfg) -> Dict[str, tuple]:
        """Group name -> (named trainable parameters, lr or None for ``train.lr``[, weight decay or None
        for ``train.weight_decay``]). Default: one group."""
        return {"model": ([(n, p) for n, p in model.named_parameters() if p.requires_grad], None)}

    @staticmethod
    def connector_groups(model: nn.Module, cfg, connector: str):
        """:meth:`param_groups` with the trainable parameters of top-level module ``connector`` in their own
        group at ``train.projector_lr`` (LLaVA's ``mm_projector_lr``) and the rest in ``model``."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        own = [(n, p) for n, p in named if n.startswith(connector + ".")]
        return {connector: (own, cfg.train.projector_lr),
                "model": ([(n, p) for n, p in named if not n.startswith(connector + ".")], None)}

    # -- data ----------------------------------------------------------------------------------------------
    def processor(self, cfg, model: nn.Module, tokenizer):
        """The :class:`~mmit.data.processor.Processor` for this model (picklable, stateless)."""
        raise NotImplementedError

    # -- training step ---------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Scalar training loss for a :class:`~mmit.data.batch.Batch` already on the model's device."""
        raise NotImplementedError

    def count(self, batch) -> int:
        """Units of work in a batch (see :attr:`unit`)."""
        return int(batch.attention_mask.sum())

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called after every optimizer step (e.g. an EMA update)."""

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_config(self, cfg):
        """The config written into a checkpoint (e.g. with paths to files :meth:`save_extra` writes)."""
        return cfg

    def save_extra(self, model: nn.Module, ckpt_dir: Path) -> None:
        """Write family-specific state (e.g. EMA weights, a second tokenizer) into a checkpoint folder."""

    def load_extra(self, model: nn.Module, ckpt_dir: Path, cfg) -> None:
        """Read what :meth:`save_extra` wrote (a missing file is not an error: older checkpoints)."""
