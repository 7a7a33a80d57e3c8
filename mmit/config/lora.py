"""The ``train.lora`` section: LoRA / QLoRA adapters on the LLM (:mod:`mmit.training.lora`).

The defaults are LLaVA's ``--lora_enable`` ones (``llava/train/train.py``: ``lora_r 64``, ``lora_alpha
16``, ``lora_dropout 0.05``, ``lora_bias none``, every ``nn.Linear`` of the LLM except ``lm_head``).
Example: ``--train.lora.enabled=true --train.lora.r=128 --train.lora.alpha=256`` (LLaVA-1.5's
``finetune_lora.sh``); QLoRA adds ``--train.lora.quantize=4bit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LoRAConfig:
    #: Train LoRA adapters on the LLM instead of its weights (any stage, any text family). The LLM's own
    #: weights that the stage would train are frozen; the stage's connector (projector, Q-Former, ...) and
    #: other modules still train as the stage says (LLaVA: LoRA + ``mm_projector``).
    enabled: bool = False
    #: Rank of each adapter.
    r: int = 64
    #: Scaling numerator: the adapter's update is ``alpha / r * B A x``.
    alpha: int = 16
    #: Dropout on the adapter's input.
    dropout: float = 0.05
    #: Which linear layers of the LLM get adapters: a regular expression matched (``re.fullmatch``)
    #: against each ``nn.Linear``'s dotted name inside the LLM or against its last part, e.g.
    #: ``q_proj|v_proj`` or ``model\.layers\.[0-9]+\.self_attn\..*``. Empty: every ``nn.Linear`` of the
    #: LLM except its output head (LLaVA's ``find_all_linear_names``).
    target_modules: str = ""
    #: Biases stay frozen and are not part of the adapter (peft's ``bias="none"``, LLaVA's default).
    bias: Literal["none"] = "none"
    #: ``4bit``: QLoRA, the LLM's linear layers held in 4 bits through bitsandbytes (a CUDA GPU and
    #: ``pip install 'mmit[qlora]'`` needed); ``none``: the base weights keep the run's dtype.
    quantize: Literal["none", "4bit"] = "none"
    #: 4-bit data type (QLoRA: ``nf4``).
    quant_type: Literal["nf4", "fp4"] = "nf4"
    #: Double quantization of the 4-bit scales (QLoRA: on).
    double_quant: bool = True
