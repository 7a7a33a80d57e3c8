"""Config sections of the shared model parts, which every family's model config composes.

Vision towers (:mod:`mmit.models.encoders`), projectors and the Q-Former (:mod:`mmit.models.connectors`)
and LLMs (:mod:`mmit.models.llm`). Fields that name local files or folders are declared with
:func:`path_field`: a checkpoint's config resolves them against the checkpoint folder when relative
(:func:`mmit.config.paths.absolutise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from mmit.config.paths import path_field


@dataclass
class VisionTowerConfig:
    #: Registry key (``mmit.models.encoders.VISION_TOWERS``), e.g. ``clip-vit-l-14-336`` or ``tiny-clip-vit``.
    name: str = "clip-vit-l-14-336"
    #: Override where the weights come from: hub id or local folder. None: the registry member's default.
    name_or_path: Optional[str] = path_field(None)
    #: Hidden layer whose output is used (LLaVA: -2, the penultimate layer).
    select_layer: int = -2
    #: ``patch`` drops CLS (LLaVA), ``cls_patch`` keeps it.
    select_feature: Literal["patch", "cls_patch"] = "patch"
    #: ``pad`` (LLaVA-1.5: pad to square with the mean colour, then the processor), ``crop``
    #: (the processor's resize + centre crop) or ``resize`` (squash to the input size).
    image_aspect_ratio: Literal["pad", "crop", "resize"] = "pad"
    #: Keep the tower frozen (LLaVA, InstructBLIP). Stage ``full`` unfreezes it regardless.
    frozen: bool = True


@dataclass
class ProjectorConfig:
    #: Registry key: ``linear``, ``mlp{N}x-gelu`` (``mlp2x-gelu`` is LLaVA-1.5), ``identity``.
    name: str = "mlp2x-gelu"


@dataclass
class LLMConfig:
    #: Hub id, local folder, or a ``tiny-*`` registry member (built locally, no download).
    name_or_path: str = path_field("lmsys/vicuna-7b-v1.5")
    #: Tokenizer location; None means the same as ``name_or_path``.
    tokenizer: Optional[str] = path_field(None)
    #: Allow the model folder's / hub repo's own modelling code (its ``auto_map``). Set only on the command
    #: line (``--model.llm.trust_remote_code=true``; ``mmit generate/eval --trust-remote-code`` for a
    #: checkpoint): a config file or a checkpoint's config cannot turn it on (:mod:`mmit.config.remote_code`).
    trust_remote_code: bool = False
    #: ``eager``, ``sdpa`` or ``flash_attention_2``; None lets transformers choose.
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = None


@dataclass
class QFormerConfig:
    """The Q-Former connector of the ``instructblip`` family (BLIP-2 arXiv 2301.12597, InstructBLIP
    arXiv 2305.06500). Defaults are InstructBLIP's: BERT-base width, 32 queries, cross-attention
    every 2 layers, the instruction fed to the Q-Former, 128 instruction / 256 answer tokens."""

    #: Learned query tokens M (the connector's output length per image).
    num_query_tokens: int = 32
    #: Q-Former width (BERT-base: 768).
    hidden_size: int = 768
    #: Q-Former layers.
    num_hidden_layers: int = 12
    #: Attention heads per layer.
    num_attention_heads: int = 12
    #: Feed-forward width.
    intermediate_size: int = 3072
    #: A layer cross-attends to the image features when ``layer_idx % cross_attention_frequency == 0``.
    cross_attention_frequency: int = 2
    #: The Q-Former's word vocabulary (bert-base-uncased 30522, +1 for LAVIS's ``[DEC]`` = 30523).
    vocab_size: int = 30523
    #: Longest instruction the Q-Former's position table holds (tokens).
    max_position_embeddings: int = 512
    #: Dropout on hidden states (training only).
    hidden_dropout_prob: float = 0.1
    #: Dropout on attention weights (training only).
    attention_probs_dropout_prob: float = 0.1
    #: Feed the instruction to the Q-Former (InstructBLIP); False is BLIP-2 (queries only).
    text_input: bool = True
    #: The Q-Former's BERT-family tokenizer: hub id, local folder or ``tiny-bert``.
    tokenizer: str = path_field("bert-base-uncased")
    #: Initial weights: None (random, N(0, 0.02)), a BERT checkpoint (``bert-base-uncased``; cross-attention
    #: stays random, query FFNs copy the text FFNs, as LAVIS ``init_Qformer``), or an
    #: ``InstructBlipForConditionalGeneration`` or ``Blip2ForConditionalGeneration`` (Q-Former, queries and,
    #: if shapes fit, projection). Comma-separated sources apply in order (LAVIS: ``bert-base-uncased,<blip-2>``).
    init_from: Optional[str] = None
    #: Instruction tokens kept (left-truncated), for the Q-Former text and the LLM input (LAVIS ``max_txt_len``).
    max_text_length: int = 128
    #: Answer tokens kept, eos included (right-truncated; LAVIS ``max_output_txt_len``).
    max_output_length: int = 256
    #: Frames taken from each video (uniformly spaced); each goes through the tower and Q-Former.
    num_frames: int = 4
