"""``mmit export/import --format video-llama`` (mmit/families/video_llama/export.py; Video-LLaMA,
arXiv 2306.02858): round trips, strictness, and parity of the name mapping against the reference
Q-Former (DAMO-NLP-SG/Video-LLaMA ``video_llama/models/Qformer.py``, read from the local mirror at
test time; skipped when the mirror is absent)."""

from __future__ import annotations

import importlib.util
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from mmit.families.video_llama.export import (STATE_FILE, from_video_llama, to_video_llama)

MIRROR = Path("/work/.mirror/DAMO-NLP-SG+Video-LLaMA/repo")
H, M_IMG, M_V, M_A, FRAMES, CLIPS = 64, 8, 8, 4, 4, 4


def _qformer(queries: int, freq: int):
    from mmit.config.components import QFormerConfig

    return QFormerConfig(num_query_tokens=queries, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, cross_attention_frequency=freq, vocab_size=600, text_input=False)


def tiny_config(audio: bool, stage: str = "align"):
    """A tiny video-llama RunConfig (tiny-eva-vit, tiny-llama, tiny-whisper-encoder over 4 clips of 1 s)."""
    from mmit.config.audio import AudioEncoderConfig
    from mmit.config.components import LLMConfig, VisionTowerConfig
    from mmit.config.schema import RunConfig

    cfg = RunConfig.for_family("video-llama")
    m = cfg.model
    m.vision_tower = VisionTowerConfig(name="tiny-eva-vit", select_layer=-1, select_feature="cls_patch",
                                       image_aspect_ratio="crop")
    m.image_qformer, m.video_qformer, m.audio_qformer = _qformer(M_IMG, 2), _qformer(M_V, 1), _qformer(M_A, 1)
    m.max_frame_pos, m.num_frames, m.max_audio_pos = 8, FRAMES, CLIPS
    m.audio_encoder = (AudioEncoderConfig(name="tiny-whisper-encoder", clip_seconds=1.0, num_clips=CLIPS)
                       if audio else None)
    m.train_branch = "both" if audio else "video"
    m.llm = LLMConfig(name_or_path="tiny-llama")
    cfg.train.stage = stage
    return cfg


def _exported_part(name: str, llm: bool) -> bool:
    return not name.startswith(("vision_tower.", "audio_encoder.")) and (llm or not name.startswith("llm."))


def make_checkpoint(folder: Path, audio: bool, llm: bool, trained=None):
    """An mmit checkpoint whose exported parts (or those ``trained(name)`` selects) are perturbed (so
    nothing equals a fresh build) and marked trainable (so they are saved). Returns ``(model, cfg)``."""
    from mmit.config.schema import save_config
    from mmit.families import get_family
    from mmit.training.checkpoint import save_weights

    cfg = tiny_config(audio, "finetune" if llm else "align")
    model, tokenizer = get_family("video-llama").build(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            keep = _exported_part(name, llm) if trained is None else trained(name)
            if keep:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            p.requires_grad_(keep)
    folder.mkdir(parents=True)
    save_weights(model, folder / "model.safetensors")
    save_config(cfg, folder / "config.yaml")
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    return model.eval(), cfg


def lavis_qformer_keys(prefix: str, layers: int, freq: int):
    """The parameter names a Video-LLaMA Q-Former keeps after its deletions (LAVIS BertLMHeadModel)."""
    keys = [f"{prefix}.bert.embeddings.LayerNorm.{w}" for w in ("weight", "bias")]
    for i in range(layers):
        blocks = ["attention"] + (["crossattention"] if i % freq == 0 else [])
        for b in blocks:
            keys += [f"{prefix}.bert.encoder.layer.{i}.{b}.self.{p}.{w}" for p in ("query", "key", "value")
                     for w in ("weight", "bias")]
            keys += [f"{prefix}.bert.encoder.layer.{i}.{b}.output.{p}.{w}" for p in ("dense", "LayerNorm")
                     for w in ("weight", "bias")]
        keys += [f"{prefix}.bert.encoder.layer.{i}.intermediate_query.dense.{w}" for w in ("weight", "bias")]
        keys += [f"{prefix}.bert.encoder.layer.{i}.output_query.{p}.{w}" for p in ("dense", "LayerNorm")
                 for w in ("weight", "bias")]
    return keys


def _inputs(model, audio: bool):
    gen = torch.Generator().manual_seed(1)
    s = model.vision_tower.image_size
    frames = torch.randn(2, FRAMES, 3, s, s, generator=gen)
    sound = torch.randn(2, CLIPS, *model.audio_encoder.input_shape, generator=gen) if audio else None
    return frames, sound


@pytest.fixture(scope="module", params=[(False, False), (True, True)], ids=["video-only", "audio+llm"])
def round_trip(request, tmp_path_factory):
    """(original model, first export, second export, imported checkpoint, audio, llm) via the CLI."""
    from mmit.cli import main

    audio, llm = request.param
    tmp = tmp_path_factory.mktemp("vl")
    model, _ = make_checkpoint(tmp / "ckpt", audio, llm)
    assert main(["export", "--checkpoint", str(tmp / "ckpt"), "--format", "video-llama", "--output", str(tmp / "vl1")]) == 0
    assert main(["import", "--format", "video-llama", "--input", str(tmp / "vl1"), "--output", str(tmp / "back")]) == 0
    assert main(["export", "--checkpoint", str(tmp / "back"), "--format", "video-llama", "--output", str(tmp / "vl2")]) == 0
    load = lambda d: torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)["model"]  # noqa: E731
    return model, load(tmp / "vl1"), load(tmp / "vl2"), tmp / "back", audio, llm


def test_round_trip_is_bit_exact(round_trip):
    _, first, second, *_ = round_trip
    assert set(first) == set(second), set(first) ^ set(second)
    for k in first:
        assert first[k].dtype == second[k].dtype and torch.equal(first[k], second[k]), k


def test_exported_names_are_video_llamas(round_trip):
    model, first, _, _, audio, llm = round_trip
    prefixes = ["Qformer.bert.", "query_tokens", "video_Qformer.bert.", "video_query_tokens", "llama_proj.",
                "video_frame_position_embedding."]
    if audio:
        prefixes += ["audio_Qformer.bert.", "audio_query_tokens", "audio_llama_proj.", "audio_position_embedding."]
    if llm:
        prefixes.append("llama_model.")
    assert all(k.startswith(tuple(prefixes)) for k in first), [k for k in first if not k.startswith(tuple(prefixes))]
    assert all(any(k.startswith(p) for k in first) for p in prefixes)
    deleted = re.compile(r"word_embeddings|position_embeddings\.|\.layer\.\d+\.(intermediate|output)\.|cls\.|position_ids"
                         r"|^visual_encoder|^ln_vision|^audio_encoder")
    assert not [k for k in first if deleted.search(k) and not k.startswith("llama_model.")]
    expected = (lavis_qformer_keys("Qformer", 2, 2) + lavis_qformer_keys("video_Qformer", 2, 1)
                + ["query_tokens", "video_query_tokens", "llama_proj.weight", "llama_proj.bias",
                   "video_frame_position_embedding.weight"])
    if audio:
        expected += lavis_qformer_keys("audio_Qformer", 2, 1) + [
            "audio_query_tokens", "audio_llama_proj.weight", "audio_llama_proj.bias", "audio_position_embedding.weight"]
    assert sorted(k for k in first if not k.startswith("llama_model.")) == sorted(expected)
    assert first["video_frame_position_embedding.weight"].shape == (8, H)
    assert first["llama_proj.weight"].shape == (model.llm.config.hidden_size, H)
    if llm:  # Video-LLaMA's LLM has no <ImageHere>/<AudioHere> rows
        rows = model.llm.get_input_embeddings().weight.shape[0]
        assert first["llama_model.model.embed_tokens.weight"].shape[0] == rows - 2
        assert first["llama_model.lm_head.weight"].shape[0] == rows - 2


def test_imported_checkpoint_loads_and_encodes_like_the_original(round_trip):
    from safetensors import safe_open

    from mmit.training.checkpoint import load_model_from_checkpoint

    model, first, _, back, audio, llm = round_trip
    loaded, _, cfg = load_model_from_checkpoint(back)
    assert cfg.family == "video-llama"
    with safe_open(str(back / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert not any(k.startswith(("vision_tower.", "audio_encoder.")) for k in saved)
    assert any(k.startswith("llm.") for k in saved) == llm
    ref = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        if _exported_part(name, llm) and "word_embeddings" not in name and "position_embeddings" not in name \
                and not re.search(r"\.layer\.\d+\.(intermediate|output)\.", name) and "embed_tokens" not in name \
                and "lm_head" not in name:
            assert torch.equal(p, ref[name]), name
    frames, sound = _inputs(model, audio)
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(frames), model.encode_video(frames))
        if audio:
            assert torch.equal(loaded.encode_audio(sound), model.encode_audio(sound))


def test_export_writes_what_the_checkpoint_holds(tmp_path):
    """Stage align with the video branch training: like a Video-LLaMA vision-language checkpoint, the file
    holds the video branch only (the frozen BLIP-2 Q-Former and LLM come from where the config says)."""
    from mmit.families.video_llama.export import export_video_llama

    video = ("video_qformer.", "frame_position_embedding.")
    make_checkpoint(tmp_path / "ckpt", audio=True, llm=False, trained=lambda n: n.startswith(video))
    sd = torch.load(export_video_llama(tmp_path / "ckpt", tmp_path / "vl") / STATE_FILE, weights_only=True)["model"]
    expected = lavis_qformer_keys("video_Qformer", 2, 1) + [
        "video_query_tokens", "llama_proj.weight", "llama_proj.bias", "video_frame_position_embedding.weight"]
    assert sorted(sd) == sorted(expected)


# -- strictness ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder of a video-only export, its state dict)."""
    from mmit.families.video_llama.export import export_video_llama

    tmp = tmp_path_factory.mktemp("strict")
    make_checkpoint(tmp / "ckpt", audio=False, llm=False)
    out = export_video_llama(tmp / "ckpt", tmp / "vl")
    return out, torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)["model"]


def _folder(tmp_path: Path, src: Path, files: dict) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(src / "config.yaml", d / "config.yaml")
    for name, obj in files.items():
        torch.save(obj, d / name)
    return d


def test_import_refuses_unknown_key_naming_key_and_file(tmp_path, exported):
    from mmit.families.video_llama.export import import_video_llama

    src, sd = exported
    d = _folder(tmp_path, src, {"checkpoint.pth": {"model": {**sd, "visual_encoder.blocks.0.norm1.weight": torch.ones(3)}}})
    with pytest.raises(KeyError, match=r"visual_encoder\.blocks\.0\.norm1\.weight") as e:
        import_video_llama(d, tmp_path / "out")
    assert "checkpoint.pth" in str(e.value)


def test_import_refuses_wrong_shape_naming_key(tmp_path, exported):
    from mmit.families.video_llama.export import import_video_llama

    src, sd = exported
    d = _folder(tmp_path, src, {STATE_FILE: {**sd, "video_query_tokens": torch.zeros(1, M_V + 1, H)}})  # bare sd
    with pytest.raises(ValueError, match="video_query_tokens"):
        import_video_llama(d, tmp_path / "out")


class NotATensor:  # a pickled object of this class must never be unpickled by the importer
    pass


def test_import_pth_is_weights_only(tmp_path, exported):
    from mmit.families.video_llama.export import import_video_llama

    src, sd = exported
    d = _folder(tmp_path, src, {STATE_FILE: {"model": {**sd, "llama_proj.weight": NotATensor()}}})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as e:
        import_video_llama(d, tmp_path / "out")
    assert STATE_FILE in str(e.value)


def test_import_skips_stateless_buffers_and_merges_branch_files(tmp_path, exported):
    """Video-LLaMA's ``_save_checkpoint`` keeps buffers; Video-LLaMA-2 releases the VL and AL branches
    as two files (``ckpt``, ``ckpt_2``): both are read, a key they share must agree."""
    from mmit.families.video_llama.export import import_video_llama
    from mmit.training.checkpoint import load_model_from_checkpoint

    src, sd = exported
    buffers = {"Qformer.bert.embeddings.position_ids": torch.arange(512)[None],
               "video_Qformer.bert.embeddings.position_ids": torch.arange(512)[None],
               "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    video = {k: v for k, v in sd.items() if not k.startswith(("Qformer.", "query_tokens"))}
    image = {k: v for k, v in sd.items() if k not in video}
    d = _folder(tmp_path, src, {"a_vl.pth": {"model": {**video, **buffers}, "epoch": 3},
                                "b_blip2.pth": {"model": {**image, **buffers}}})
    out = import_video_llama(d, tmp_path / "out")
    model, _, _ = load_model_from_checkpoint(out)
    again = to_video_llama(model)
    assert set(again) == set(sd) and all(torch.equal(again[k], sd[k]) for k in sd)
    torch.save({"model": {"llama_proj.bias": sd["llama_proj.bias"] + 1}}, d / "c_other.pth")
    with pytest.raises(ValueError, match="llama_proj.bias differs"):
        import_video_llama(d, tmp_path / "out2")


def test_import_without_image_qformer_applies_init_from(tmp_path, exported):
    """Video-LLaMA's training checkpoints lack the frozen BLIP-2 Q-Former: the importer initialises it from
    ``image_qformer.init_from`` (here a tiny BERT) and writes it into the checkpoint."""
    from safetensors import safe_open
    from transformers import BertModel

    from mmit.config.schema import load_config, save_config
    from mmit.families.video_llama.export import import_video_llama
    from mmit.models.tiny_seq2seq import resolve_bert_path
    from mmit.training.checkpoint import load_model_from_checkpoint

    src, sd = exported
    d = _folder(tmp_path, src, {STATE_FILE: {"model": {k: v for k, v in sd.items()
                                                       if not k.startswith(("Qformer.", "query_tokens"))}}})
    cfg = load_config(str(d / "config.yaml"))
    cfg.model.image_qformer.init_from = "tiny-bert"
    save_config(cfg, d / "config.yaml")
    out = import_video_llama(d, tmp_path / "out")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert any(k.startswith("image_qformer.qformer.") for k in f.keys())
    model, _, _ = load_model_from_checkpoint(out)
    bert = BertModel.from_pretrained(resolve_bert_path("tiny-bert"))
    torch.testing.assert_close(model.image_qformer.qformer.encoder.layer[0].attention.attention.query.weight,
                               bert.encoder.layer[0].attention.self.query.weight, atol=0, rtol=0)
    assert torch.equal(model.video_qformer.query_tokens, sd["video_query_tokens"])


def test_import_needs_config_and_state(tmp_path, exported):
    from mmit.families.video_llama.export import import_video_llama

    src, _ = exported
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        import_video_llama(tmp_path / "empty", tmp_path / "out")
    shutil.copy(src / "config.yaml", tmp_path / "empty" / "config.yaml")
    with pytest.raises(FileNotFoundError, match="no state file"):
        import_video_llama(tmp_path / "empty", tmp_path / "out")


# -- parity with the reference Q-Former ----------------------------------------------------------------------
class _PreTrainedModelShim(nn.Module):
    """What the reference's ``BertPreTrainedModel`` uses of transformers 4.28's ``PreTrainedModel``
    (the installed transformers' class needs ``post_init``, which the 2023 code never calls)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__()
        self.config = config

    def init_weights(self):
        self.apply(self._init_weights)

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def invert_attention_mask(self, mask):
        ext = mask[:, None, None, :].to(self.dtype)
        return (1.0 - ext) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask, num_layers):
        assert head_mask is None
        return [None] * num_layers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference ``video_llama/models/Qformer.py`` module, written out of the mirror (bare git dir) and
    imported with shims for names transformers has moved or dropped since 4.28."""
    if not MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip(f"the Video-LLaMA mirror {MIRROR} (or git) is absent")
    path = tmp_path_factory.mktemp("ref") / "video_llama_Qformer.py"
    src = subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:video_llama/models/Qformer.py"],
                         capture_output=True, check=True).stdout
    path.write_bytes(src)
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    def unused(*args, **kwargs):
        raise NotImplementedError("head pruning is not used by Video-LLaMA")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mu, "PreTrainedModel", _PreTrainedModelShim)
        mp.setattr(mu, "apply_chunking_to_forward", pu.apply_chunking_to_forward, raising=False)
        mp.setattr(mu, "prune_linear_layer", pu.prune_linear_layer, raising=False)
        mp.setattr(mu, "find_pruneable_heads_and_indices", unused, raising=False)
        spec = importlib.util.spec_from_file_location("video_llama_reference_qformer", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def _reference_qformer(ref, queries: int, width: int, freq: int, gen):
    """Video-LLaMA's ``init_video_Qformer`` (freq 1) / BLIP-2's ``init_Qformer`` (freq 2) at tiny sizes,
    with Video-LLaMA's deletions, every weight randomised. Returns ``(BertLMHeadModel, query_tokens)``."""
    cfg = ref.BertConfig(vocab_size=600, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128)
    cfg.encoder_width, cfg.add_cross_attention, cfg.cross_attention_freq, cfg.query_length = width, True, freq, queries
    q = ref.BertLMHeadModel(config=cfg)
    q.cls = None
    q.bert.embeddings.word_embeddings = None
    q.bert.embeddings.position_embeddings = None
    for layer in q.bert.encoder.layer:
        layer.output = None
        layer.intermediate = None
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return q.eval(), nn.Parameter(torch.randn(1, queries, H, generator=gen))


def test_parity_with_reference_qformers(reference):
    """Reference modules -> a Video-LLaMA state dict -> our importer: the video Q-Former + llama_proj,
    ``encode_video`` (against the reference ``encode_videoQformer_visual`` tail) and ``encode_audio``
    (against ``encode_audioQformer``'s tail, one feature per clip as ImageBind) agree; our export gives
    back exactly the reference's names and tensors."""
    from mmit.families import get_family

    model, _ = get_family("video-llama").build(tiny_config(audio=True))
    model.eval()
    gen = torch.Generator().manual_seed(2)
    d_llm, d_vis, d_aud = model.llm.config.hidden_size, model.vision_tower.hidden_size, model.audio_encoder.hidden_size
    image_q, query_tokens = _reference_qformer(reference, M_IMG, d_vis, 2, gen)
    video_q, video_query_tokens = _reference_qformer(reference, M_V, H, 1, gen)
    audio_q, audio_query_tokens = _reference_qformer(reference, M_A, d_aud, 1, gen)
    llama_proj, audio_llama_proj = nn.Linear(H, d_llm), nn.Linear(H, d_llm)
    frame_pos, audio_pos = nn.Embedding(8, H), nn.Embedding(CLIPS, d_aud)
    sd = {"query_tokens": query_tokens, "video_query_tokens": video_query_tokens,
          "audio_query_tokens": audio_query_tokens}
    for prefix, mod in (("Qformer", image_q), ("video_Qformer", video_q), ("audio_Qformer", audio_q),
                        ("llama_proj", llama_proj), ("audio_llama_proj", audio_llama_proj),
                        ("video_frame_position_embedding", frame_pos), ("audio_position_embedding", audio_pos)):
        sd.update({f"{prefix}.{k}": v for k, v in mod.state_dict().items()})
    sd = {k: v.detach().clone() for k, v in sd.items()}
    loaded = from_video_llama(model, sd, "reference")
    assert any(n.startswith("image_qformer.qformer.") for n in loaded)

    back = to_video_llama(model)
    expected = {k for k in sd if not k.endswith("position_ids")}
    assert set(back) == expected, set(back) ^ expected
    assert all(torch.equal(back[k], sd[k]) for k in back)

    def run(q, queries, feats):
        ones = torch.ones(feats.shape[:-1], dtype=torch.long)
        return q.bert(query_embeds=queries.expand(feats.shape[0], -1, -1), encoder_hidden_states=feats,
                      encoder_attention_mask=ones, return_dict=True).last_hidden_state

    with torch.no_grad():
        x = torch.randn(2, FRAMES * M_IMG, H, generator=gen)
        torch.testing.assert_close(model.video_qformer(x), llama_proj(run(video_q, video_query_tokens, x)),
                                   atol=1e-5, rtol=1e-5)

        # encode_videoQformer_visual, from the image features on (the tower is checked elsewhere)
        s = model.vision_tower.image_size
        frames = torch.randn(2, FRAMES, 3, s, s, generator=gen)
        image_embeds = model.vision_tower(frames.flatten(0, 1))
        q_hidden = run(image_q, query_tokens, image_embeds)  # [(b t), q, h]
        pos = frame_pos(torch.arange(FRAMES)[None].expand(2, -1)).unsqueeze(-2)  # [b, t, 1, h]
        frame_hidden = (q_hidden.reshape(2, FRAMES, M_IMG, H) + pos).reshape(2, FRAMES * M_IMG, H)  # b (t q) h
        want = llama_proj(run(video_q, video_query_tokens, frame_hidden))
        torch.testing.assert_close(model.encode_video(frames), want, atol=1e-5, rtol=1e-5)

        # encode_audioQformer: one ImageBind embedding per clip + audio_position_embedding(clip)
        feats = torch.randn(2, CLIPS, d_aud, generator=gen)

        class OnePerClip(nn.Module):
            def forward(self, inputs):
                assert inputs.shape[1] == CLIPS
                return feats

        model.audio_encoder = OnePerClip()
        audio_in = feats + audio_pos(torch.arange(CLIPS)[None].expand(2, -1))
        want = audio_llama_proj(run(audio_q, audio_query_tokens, audio_in))
        torch.testing.assert_close(model.encode_audio(torch.zeros(2, CLIPS, 1)), want, atol=1e-5, rtol=1e-5)
