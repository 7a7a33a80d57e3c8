"""The training-run configuration.

One YAML file describes a whole run (``configs/llava/*.yaml``). YAML names registry keys (never
import paths); unknown keys are errors; every field can be overridden on the command line as
``--section.field=value`` (draccus). The resolved config is written into every run folder and
every checkpoint as ``config.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import draccus


@dataclass
class VisionTowerConfig:
    #: Registry key (``mmit.models.encoders.VISION_TOWERS``), e.g. ``clip-vit-l-14-336`` or ``tiny-clip-vit``.
    name: str = "clip-vit-l-14-336"
    #: Override where the weights come from: hub id or local folder. None: the registry member's default.
    name_or_path: Optional[str] = None
    #: Hidden layer whose output is used (LLaVA: -2, the penultimate layer).
    select_layer: int = -2
    #: ``patch`` drops CLS (LLaVA), ``cls_patch`` keeps it.
    select_feature: str = "patch"
    #: ``pad`` (LLaVA-1.5: pad to square with the mean colour, then the processor), ``crop``
    #: (the processor's resize + centre crop) or ``resize`` (squash to the input size).
    image_aspect_ratio: str = "pad"
    #: Keep the tower frozen (LLaVA, InstructBLIP). Stage ``full`` unfreezes it regardless.
    frozen: bool = True


@dataclass
class ProjectorConfig:
    #: Registry key: ``linear``, ``mlp{N}x-gelu`` (``mlp2x-gelu`` is LLaVA-1.5), ``identity``.
    name: str = "mlp2x-gelu"


@dataclass
class LLMConfig:
    #: Hub id, local folder, or a ``tiny-*`` registry member (built locally, no download).
    name_or_path: str = "lmsys/vicuna-7b-v1.5"
    #: Tokenizer location; None means the same as ``name_or_path``.
    tokenizer: Optional[str] = None
    #: Allow custom modelling code from the hub. Off unless a config turns it on.
    trust_remote_code: bool = False
    #: ``eager``, ``sdpa`` or ``flash_attention_2``; None lets transformers choose.
    attn_implementation: Optional[str] = None


@dataclass
class QFormerConfig:
    """The Q-Former connector of the ``instructblip`` family (BLIP-2 arXiv 2301.12597, InstructBLIP
    arXiv 2305.06500). Defaults are InstructBLIP's: BERT-base width, 32 queries, cross-attention
    every 2 layers, the instruction fed to the Q-Former, 128 instruction / 256 answer tokens."""

    #: Learned query tokens M (the connector's output length per image).
    num_query_tokens: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    #: A layer cross-attends to the image features when ``layer_idx % cross_attention_frequency == 0``.
    cross_attention_frequency: int = 2
    #: The Q-Former's word vocabulary (bert-base-uncased 30522, +1 for LAVIS's ``[DEC]`` = 30523).
    vocab_size: int = 30523
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    #: Feed the instruction to the Q-Former (InstructBLIP); False is BLIP-2 (queries only).
    text_input: bool = True
    #: The Q-Former's BERT-family tokenizer: hub id, local folder or ``tiny-bert``.
    tokenizer: str = "bert-base-uncased"
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


@dataclass
class ModelConfig:
    vision_tower: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    #: Q-Former connector settings (``family: instructblip`` only).
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    #: Conversation template: ``plain``, ``vicuna-v1``, ``llama-2``, ``chatml``.
    template: str = "vicuna-v1"
    #: Token budget per sample, image tokens included (LLaVA: ``model_max_length`` 2048).
    max_length: int = 2048
    #: Start from an earlier run's weights (a checkpoint or run folder), e.g. stage 2 from the stage-1
    #: projector (LLaVA's ``--pretrain_mm_mlp_adapter``). Only the tensors in that checkpoint are loaded.
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
    missing_media: str = "skip"
    #: A sample that does not fit ``max_length`` without cutting an image, or whose labels are all
    #: masked: ``skip`` (counted and logged) or ``error``.
    overflow: str = "skip"
    #: Shuffle buffer (samples) for shards; 0 disables. Source formats shuffle the whole list.
    shuffle_buffer: int = 1000
    #: Resampled mode for shards (sample shards with replacement: an endless stream, for several epochs).
    resampled: bool = False
    #: DataLoader worker processes (0: in the main process; exact resume needs 0).
    num_workers: int = 0


@dataclass
class TrainConfig:
    #: ``align`` (projector only), ``finetune`` (projector + LLM), ``full`` (everything, tower included).
    stage: str = "finetune"
    output_dir: str = "runs/llava"
    seed: int = 42
    #: Per-device micro-batch size.
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    #: Optimizer steps to run; -1 means ``epochs`` passes over the data.
    max_steps: int = -1
    epochs: float = 1.0
    lr: float = 2e-5
    #: Learning rate for the projector; None means ``lr``.
    projector_lr: Optional[float] = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.03
    #: ``cosine`` (with linear warmup) or ``constant`` (with linear warmup).
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    #: ``auto`` (fp32 on CPU, bf16 on GPUs that support it, else fp16), ``fp32``, ``bf16``, ``fp16``.
    precision: str = "auto"
    gradient_checkpointing: bool = False
    #: Save a checkpoint every N optimizer steps (0: only at the end).
    save_steps: int = 0
    #: Keep at most this many step checkpoints (0: keep all).
    save_total_limit: int = 2
    logging_steps: int = 1
    #: Continue from the latest checkpoint in ``output_dir`` (``mmit train --resume`` sets this).
    resume: bool = False
    #: ``tensorboard`` writes event files beside ``metrics.jsonl``; ``none`` only the JSONL.
    report_to: str = "tensorboard"
    #: Show a progress bar (loss, lr, tokens/s, ETA).
    progress_bar: bool = True


@dataclass
class DiffusionConfig:
    """InstructPix2Pix diffusion tuning (arXiv 2211.09800), used when ``family: instructpix2pix``."""

    #: Stable Diffusion folder (hub id or local path with unet/ vae/ text_encoder/ tokenizer/ scheduler/),
    #: or ``tiny-sd`` (built locally, no download).
    pretrained_model_name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    #: Hub revision / weight variant (e.g. ``fp16``) of the pretrained folder; None for the default.
    revision: Optional[str] = None
    variant: Optional[str] = None
    #: Training image size in pixels (both images resized on the short side, then cropped square).
    resolution: int = 256
    #: Centre crop instead of a random crop (the same crop for the input and the edited image).
    center_crop: bool = False
    #: Flip the image pair horizontally with probability 0.5.
    random_flip: bool = True
    #: Conditioning dropout: one r ~ U(0,1) per sample; text dropped alone when r < p_text, both when
    #: p_text <= r < p_text + p_both, image alone when the next p_image. The paper: 0.05 each.
    conditioning_dropout_prob: float = 0.05
    #: Per-case overrides of ``conditioning_dropout_prob`` (None: use it).
    text_dropout_prob: Optional[float] = None
    image_dropout_prob: Optional[float] = None
    both_dropout_prob: Optional[float] = None
    #: Keep an exponential moving average of the UNet weights (diffusers ``EMAModel``).
    use_ema: bool = True
    ema_decay: float = 0.9999
    #: When > 0 and ``data.path`` holds no shards yet, first write this many procedural edit triples
    #: there (coloured shapes; the tiny demo). 0: never write data.
    procedural_triples: int = 0


@dataclass
class RunConfig:
    #: Model family (``mmit.families.FAMILIES``): ``llava``, ``instructblip``, ``instructpix2pix``.
    family: str = "llava"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


def load_config(config_path: Optional[str] = None, args: Sequence[str] = ()) -> RunConfig:
    """Read ``config_path`` (YAML) and apply ``--a.b=c`` overrides.

    Raises ``ValueError`` naming the file and the offending key for unknown keys or bad values, and
    ``FileNotFoundError`` for a missing file.
    """
    if config_path is not None and not os.path.isfile(config_path):
        raise FileNotFoundError(f"config file not found: {config_path}")
    try:
        return draccus.parse(RunConfig, config_path=config_path, args=list(args), exit_on_error=False)
    except (draccus.utils.DecodingError, draccus.utils.DraccusException) as e:
        where = f"{config_path}: " if config_path else ""
        raise ValueError(f"{where}{e}") from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (round-trips through :func:`load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        draccus.dump(cfg, f)
