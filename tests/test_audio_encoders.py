"""Audio encoders: registry, tiny members (shapes for waveforms of different lengths, frozen / trainable,
loading back by path through the full-size members' code), sample-rate checks, ImageBind's clip
sampler and filterbank settings, and the optional ImageBind tower (skipped when not installed)."""

from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
import torch

from mmit.config.audio import AudioEncoderConfig
from mmit.models.audio import (AUDIO_ENCODERS, build_audio_encoder, clip_bounds, ensure_tiny_audio,
                               imagebind_available, tiny_audio_names)
from mmit.models.audio.ast_encoder import quiet_mel_warning
from mmit.models.audio.imagebind_audio import HUGE_URL, MEAN, STD, ImageBindFeatures, import_imagebind_model
from mmit.registry import UnknownNameError

TINY = tiny_audio_names()
FULL_OF = {"tiny-whisper-encoder": "whisper-encoder", "tiny-clap-audio": "clap-audio", "tiny-ast": "ast",
           "tiny-imagebind-audio": "imagebind-audio"}
RATE = {"tiny-clap-audio": 48000}
IMAGEBIND_SKIP = ("ImageBind is not installed: the optional extra (CC BY-NC-SA 4.0) is "
                  "`pip install --no-deps imagebind-unofficial==0.1.1 && pip install ftfy regex iopath einops`")
FLOAT32_EPS_LOG = float(np.log(np.float32(1.1920928955078125e-07)))  # Kaldi's log floor


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMIT_CACHE", str(tmp_path_factory.mktemp("mmit_cache")))
        yield


def needs_imagebind(name: str) -> None:
    if "imagebind" in name and not imagebind_available():
        pytest.skip(IMAGEBIND_SKIP)


_ENCODERS = {}


def encoder(name, frozen=True, **kw):
    """Build (cached) with the member's own rate; frozen as the trainer does it (``requires_grad_``)."""
    needs_imagebind(name)
    kw.setdefault("sample_rate", None)
    key = (name, frozen, tuple(sorted(kw.items())))
    if key not in _ENCODERS:
        enc = build_audio_encoder(AudioEncoderConfig(name=name, frozen=frozen, **kw))
        _ENCODERS[key] = enc.requires_grad_(not frozen)
    return _ENCODERS[key]


def waves(rate, seconds=(3.3, 0.7), seed=0):
    """Noisy chirps of different lengths (1-D float32 tensors at ``rate`` Hz)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in seconds:
        t = torch.arange(int(s * rate)) / rate
        out.append(0.3 * torch.sin(2 * math.pi * (300 + 400 * t) * t) + 0.05 * torch.randn(len(t), generator=g))
    return out


# -- registry and config ------------------------------------------------------------------------


def test_members_and_config_defaults():
    assert {"whisper-encoder", "clap-audio", "ast", "imagebind-audio"} <= set(AUDIO_ENCODERS.names())
    assert set(TINY) == set(FULL_OF) and set(TINY) <= set(AUDIO_ENCODERS.names())
    cfg = AudioEncoderConfig()  # Video-LLaMA: frozen ImageBind, 8 clips of 2 s at 16 kHz, last layer
    assert (cfg.name, cfg.sample_rate, cfg.clip_seconds, cfg.num_clips, cfg.select_layer, cfg.frozen) == (
        "imagebind-audio", 16000, 2.0, 8, -1, True)


@pytest.mark.parametrize("bad, close", [("whisper-encoderr", "whisper-encoder"), ("tiny-clap", "tiny-clap-audio"),
                                        ("imagebind", "imagebind-audio")])
def test_unknown_name_lists_close_matches(bad, close):
    with pytest.raises(UnknownNameError) as e:
        build_audio_encoder(AudioEncoderConfig(name=bad))
    assert close in str(e.value) and "did you mean" in str(e.value)


# -- every tiny member --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_member_shapes(name):
    enc = encoder(name)  # default layout: 8 clips of 2 s
    w = waves(enc.sample_rate)
    inputs = enc.feature_extractor(w)
    assert inputs.dtype == torch.float32 and tuple(inputs.shape) == (2, 8, *enc.input_shape)
    out = enc(inputs)
    assert tuple(out.shape) == (2, enc.num_tokens, enc.hidden_size) == (2, *enc.feature_shape)
    assert enc.num_tokens == 8 * enc.tokens_per_clip and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # the two waveforms differ
    assert torch.equal(out, enc(enc.feature_extractor(w)))  # deterministic features and forward


@pytest.mark.parametrize("name", TINY)
def test_frozen_has_no_grad_and_stays_in_eval(name):
    enc = encoder(name, frozen=True)
    enc.train()
    assert enc.frozen and not any(m.training for m in enc.modules())
    out = enc(enc.feature_extractor(waves(enc.sample_rate, (1.0,))))
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("name", TINY)
def test_trainable_builds_a_graph(name):
    enc = encoder(name, frozen=False, num_clips=2, clip_seconds=1.0)
    enc.train()
    assert not enc.frozen and enc.training
    out = enc(enc.feature_extractor(waves(enc.sample_rate, (1.5, 0.4))))
    assert out.requires_grad
    out.pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    enc.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", TINY)
def test_loads_back_by_path_through_the_full_member(name, tmp_path):
    """The tiny cache folder (saved as the hub checkpoints are) and a ``save_pretrained`` folder both
    load through the full-size member's own ``from_pretrained`` code, with identical outputs."""
    enc = encoder(name, num_clips=2)
    inputs = enc.feature_extractor(waves(enc.sample_rate))
    enc.save_pretrained(str(tmp_path / "saved"))
    for path in (str(ensure_tiny_audio(name)), str(tmp_path / "saved")):
        other = build_audio_encoder(AudioEncoderConfig(name=FULL_OF[name], name_or_path=path, sample_rate=None, num_clips=2))
        assert type(other) is type(enc) and other.feature_shape == enc.feature_shape
        other.requires_grad_(False)
        assert torch.equal(other.feature_extractor(waves(enc.sample_rate)), inputs)
        torch.testing.assert_close(other(inputs), enc(inputs))


@pytest.mark.parametrize("name", TINY)
def test_sample_rate_mismatch_names_the_expected_rate(name):
    enc = encoder(name, num_clips=1)
    wrong = 44100
    with pytest.raises(ValueError, match=rf"{enc.sample_rate} Hz"):
        enc.feature_extractor(waves(wrong, (1.0,)), sample_rate=wrong)
    assert enc.feature_extractor(waves(enc.sample_rate, (1.0,)), sample_rate=enc.sample_rate).shape[0] == 1
    with pytest.raises(ValueError, match=rf"expects audio at {enc.sample_rate} Hz"):
        build_audio_encoder(AudioEncoderConfig(name=name, sample_rate=wrong))


def test_default_rate_16k_refuses_clap():
    with pytest.raises(ValueError, match="48000 Hz"):
        build_audio_encoder(AudioEncoderConfig(name="tiny-clap-audio"))  # config default is 16000


@pytest.mark.parametrize("name", TINY)
def test_clip_longer_than_the_window_is_refused(name):
    needs_imagebind(name)
    with pytest.raises(ValueError, match="clip_seconds"):
        build_audio_encoder(AudioEncoderConfig(name=name, sample_rate=None, clip_seconds=30.0))
    with pytest.raises(ValueError, match="num_clips"):
        build_audio_encoder(AudioEncoderConfig(name=name, sample_rate=None, num_clips=0))


def test_bad_waveforms_and_inputs():
    enc = encoder("tiny-whisper-encoder", num_clips=2)
    with pytest.raises(ValueError, match="mono"):
        enc.feature_extractor([torch.zeros(2, 16000)])
    with pytest.raises(ValueError, match="empty"):
        enc.feature_extractor([torch.zeros(16000), torch.zeros(0)])
    with pytest.raises(ValueError, match="expects inputs"):
        enc(torch.zeros(2, 3, *enc.input_shape))
    tiny_np = enc.feature_extractor([np.zeros(10, dtype=np.float64)])  # numpy and very short audio are fine
    assert tuple(tiny_np.shape) == (1, 2, *enc.input_shape)


def test_feature_extractor_pickles():
    enc = encoder("tiny-ast", num_clips=2)
    fe = pickle.loads(pickle.dumps(enc.feature_extractor))
    w = waves(enc.sample_rate)
    assert torch.equal(fe(w), enc.feature_extractor(w))


# -- layer selection ----------------------------------------------------------------------------


def test_whisper_tokens_and_layers():
    enc = encoder("tiny-whisper-encoder", num_clips=2, clip_seconds=1.0)
    assert enc.tokens_per_clip == 50  # 100 frames / s, conv stride 2
    assert encoder("tiny-whisper-encoder", clip_seconds=None, num_clips=1).tokens_per_clip == 100  # whole 2 s window
    x = enc.feature_extractor(waves(16000))
    mid = encoder("tiny-whisper-encoder", num_clips=2, clip_seconds=1.0, select_layer=-2)
    assert mid(x).shape == enc(x).shape and not torch.allclose(mid(x), enc(x))
    with pytest.raises(ValueError, match="out of range"):
        build_audio_encoder(AudioEncoderConfig(name="tiny-whisper-encoder", select_layer=7))


def test_single_output_members_refuse_other_layers():
    with pytest.raises(ValueError, match="select_layer=-1"):
        build_audio_encoder(AudioEncoderConfig(name="tiny-clap-audio", sample_rate=None, select_layer=-2))
    ast = encoder("tiny-ast", num_clips=1, select_layer=1)
    assert ast.tokens_per_clip == 2 + 2 * 19  # [CLS], [DIST], 2 x 19 patches


# -- ImageBind's clip sampler and filterbank (no ImageBind package needed) ------------------------


def test_clip_bounds_follow_imagebinds_sampler():
    sr = 16000
    assert clip_bounds(5 * sr, sr, 2.0, 3) == [(0, 32000), (24000, 56000), (48000, 80000)]
    assert clip_bounds(int(1.3 * sr), sr, 2.0, 3) == [(0, 32000)] * 3  # short audio: whole waveform, repeated
    assert clip_bounds(5 * sr, sr, 2.0, 1) == [(0, 32000)]
    starts = [a for a, _ in clip_bounds(20 * sr, sr, 2.0, 8)]
    assert starts[0] == 0 and starts[-1] == 18 * sr and set(np.diff(starts)) <= {41142, 41143}  # 18 s / 7, floored


def test_imagebind_fbank_shapes_and_normalisation():
    """128 x 204 per 2 s clip at 16 kHz (198 real frames + 6 zero frames), ImageBind's (x + 4.268) / 9.138."""
    fe = ImageBindFeatures(num_clips=3)
    assert fe.sample_rate == 16000 and fe.clip_seconds == 2.0
    x = fe([torch.zeros(5 * 16000), torch.zeros(int(1.3 * 16000))])
    assert tuple(x.shape) == (2, 3, 1, 128, 204)
    # Silence: every real frame is Kaldi's log floor, the padding is 0; two known values give back mean and std.
    z = x[0, 0, 0]
    real, pad = z[:, :198], z[:, 198:]
    assert torch.allclose(real, real[0, 0]) and torch.allclose(pad, pad[0, 0])
    std = FLOAT32_EPS_LOG / (real[0, 0].item() - pad[0, 0].item())
    mean = -pad[0, 0].item() * std
    assert std == pytest.approx(STD, abs=1e-3) == pytest.approx(9.138, abs=1e-3)
    assert mean == pytest.approx(MEAN, abs=1e-3) == pytest.approx(-4.268, abs=1e-3)
    short = x[1, 0, 0]  # 1.3 s: 1 + (20800 - 400) // 160 = 128 real frames
    assert torch.allclose(short[:, 128:], pad[0, 0]) and not torch.allclose(short[:, 127], pad[0, 0])


def test_imagebind_fbank_on_a_tone():
    """A 1 kHz tone peaks in the Kaldi mel bin of 1 kHz; un-normalising gives the raw filterbank, and
    transformers' AST normalisation with std=9.138 would be off by 2 (it divides by 2 * std)."""
    from transformers import ASTFeatureExtractor

    t = np.arange(32000, dtype=np.float32) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    x = ImageBindFeatures(num_clips=1)([torch.from_numpy(tone)])[0, 0, 0].numpy()  # [128, 204]
    mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    expect = (mel(1000.0) - lo) / ((hi - lo) / 129) - 1
    assert set(np.argmax(x[:, :198], axis=0)) <= {math.floor(expect), math.ceil(expect)}
    with quiet_mel_warning():
        raw_fe = ASTFeatureExtractor(num_mel_bins=128, max_length=204, do_normalize=False)
        ast_fe = ASTFeatureExtractor(num_mel_bins=128, max_length=204, mean=-4.268, std=9.138)
    raw = raw_fe([tone], sampling_rate=16000, return_tensors="np")["input_values"][0].T
    np.testing.assert_allclose(x * 9.138 - 4.268, raw, atol=1e-4)
    ast_norm = ast_fe([tone], sampling_rate=16000, return_tensors="np")["input_values"][0].T
    np.testing.assert_allclose(ast_norm * 2, x, atol=1e-5)


# -- the optional ImageBind tower -----------------------------------------------------------------


def test_missing_imagebind_says_how_to_install(monkeypatch):
    for mod in [m for m in sys.modules if m == "imagebind" or m.startswith("imagebind.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "imagebind", None)  # as if not installed
    with pytest.raises(ImportError, match=r"imagebind-unofficial.*|CC BY-NC-SA"):
        import_imagebind_model()
    with pytest.raises(ImportError, match="CC BY-NC-SA 4.0"):
        build_audio_encoder(AudioEncoderConfig(name="imagebind-audio", name_or_path="/nowhere"))


def test_imagebind_tower_matches_imagebind_model(tmp_path):
    """The tiny tower gives per-clip embeddings whose clip mean is ``ImageBindModel.forward``'s output
    (ImageBind averages clips; Video-LLaMA keeps them), and loads out of a full ImageBind state dict."""
    if not imagebind_available():
        pytest.skip(IMAGEBIND_SKIP)
    from mmit.models.audio.imagebind_audio import load_imagebind_audio
    from mmit.models.audio.tiny import TINY_IMAGEBIND_SPEC

    enc = encoder("tiny-imagebind-audio", num_clips=3)
    small = {f"{m}_{k}": v for m in ("vision", "text", "depth", "thermal", "imu")
             for k, v in dict(embed_dim=8, num_blocks=1, num_heads=1).items()}
    full = import_imagebind_model().ImageBindModel(**small, **TINY_IMAGEBIND_SPEC).eval()
    missing, _ = full.load_state_dict(enc.model.state_dict(), strict=False)
    assert not [k for k in missing if ".audio." in k]
    inputs = enc.feature_extractor(waves(16000, (5.0, 1.2)))
    assert tuple(inputs.shape) == (2, 3, 1, 128, 204)
    out = enc(inputs)
    assert tuple(out.shape) == (2, 3, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((2, 3), 20.0))  # normalised, logit scale 20
    with torch.no_grad():
        torch.testing.assert_close(out.mean(1), full({"audio": inputs})["audio"])
    torch.save(full.state_dict(), tmp_path / "imagebind_tiny.pth")
    model, spec = load_imagebind_audio(str(tmp_path / "imagebind_tiny.pth"), spec=TINY_IMAGEBIND_SPEC)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs.flatten(0, 1)).reshape(2, 3, 16), out)
    with pytest.raises(ValueError, match=HUGE_URL):
        build_audio_encoder(AudioEncoderConfig(name="imagebind-audio"))
