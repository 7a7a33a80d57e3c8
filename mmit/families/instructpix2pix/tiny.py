"""``tiny-sd``: a Stable-Diffusion-shaped folder of tiny random components, built locally (no download).

The folder has the layout of a diffusers Stable Diffusion checkpoint, so it loads through the same
code as ``stable-diffusion-v1-5/stable-diffusion-v1-5``::

    <mmit cache>/tiny/tiny-sd/
        unet/          UNet2DConditionModel (16/32 channels), 4 -> 4 channels (the InstructPix2Pix surgery widens it)
        vae/           AutoencoderKL, 3 blocks (4x downsampling: 32 px images -> 4 x 8 x 8 latents)
        text_encoder/  CLIPTextModel, width 32, 2 layers
        tokenizer/     CLIPTokenizer (BPE with CLIP's ``</w>`` word ends, trained here on a small corpus)
        scheduler/     DDPMScheduler with SD v1.5's betas (scaled_linear 0.00085 -> 0.012, 1000 steps)

Weights come from the libraries' own initialisers under a fixed seed (inside ``torch.random.fork_rng``,
so the global RNG is untouched). A UNet forward pass on a batch of 8 takes milliseconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch

from mmit.models.cache import build_dir_once, mmit_cache_dir

TINY_SD_NAME = "tiny-sd"
#: Bump when a builder changes; cached folders with another version are rebuilt.
TINY_SD_FORMAT = 2
TINY_SD_IMAGE_SIZE = 32
TINY_SD_MAX_TOKENS = 32

TINY_UNET_CONFIG: Dict[str, Any] = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_VAE_CONFIG: Dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4,
    sample_size=TINY_SD_IMAGE_SIZE,
)
TINY_TEXT_CONFIG: Dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=TINY_SD_MAX_TOKENS, projection_dim=32,
)
#: Stable Diffusion v1.5's ``scheduler/scheduler_config.json`` (DDPM form).
SD_SCHEDULER_CONFIG: Dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1, prediction_type="epsilon",
)
#: Words the tiny tokenizer learns merges for (the procedural edit prompts plus common words).
_CORPUS_WORDS = (
    "make the a an of to it in on and with turn change move into colour color red green blue yellow "
    "purple orange white black gray grey cyan magenta square circle triangle shape left right up down "
    "bigger smaller larger background picture photo image add remove put is as at by"
).split()


def build_tiny_clip_tokenizer(model_max_length: int = TINY_SD_MAX_TOKENS):
    """A :class:`transformers.CLIPTokenizer` with a small BPE vocabulary (CLIP's ``</w>`` word ends,
    ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1, also the pad token). Every byte symbol is in the
    vocabulary with and without ``</w>``, so no text maps to the unknown token. Deterministic."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False, min_frequency=1)
    bpe.train_from_iterator([" ".join(_CORPUS_WORDS)] * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: Dict[str, int] = dict(model["vocab"])
    for ch in sorted(alphabet):
        for tok in (ch, ch + "</w>"):
            if tok not in vocab:
                vocab[tok] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _build_tiny_sd(out: Path) -> None:
    from mmit.extras import require

    require("diffusers", "the tiny-sd model")  # a missing package names its extra
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_clip_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DConditionModel(**TINY_UNET_CONFIG).save_pretrained(out / "unet")
        torch.manual_seed(1)
        AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(out / "vae")
        torch.manual_seed(2)
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                  pad_token_id=eos, **TINY_TEXT_CONFIG)
        CLIPTextModel(text_cfg).save_pretrained(out / "text_encoder")
    DDPMScheduler(**SD_SCHEDULER_CONFIG).save_pretrained(out / "scheduler")


def ensure_tiny_sd() -> Path:
    """``<mmit cache>/tiny/tiny-sd``, built first if absent or stale. Raises ``OSError`` if the cache
    is not writable."""
    spec = {"format": TINY_SD_FORMAT, "member": TINY_SD_NAME, "unet": TINY_UNET_CONFIG, "vae": TINY_VAE_CONFIG,
            "text_encoder": TINY_TEXT_CONFIG, "scheduler": SD_SCHEDULER_CONFIG, "corpus": _CORPUS_WORDS}
    return build_dir_once(mmit_cache_dir() / "tiny" / TINY_SD_NAME, _build_tiny_sd, spec)


def resolve_sd_path(name_or_path: str) -> str:
    """``tiny-sd`` -> the locally built folder; anything else (hub id or folder) unchanged."""
    return str(ensure_tiny_sd()) if name_or_path == TINY_SD_NAME else name_or_path
