"""The Video-LLaMA family (arXiv 2306.02858): templates, the processor's prompt layout and labels, the two
branches and the splice, what trains per stage, and the tiny config training on the bundled video/audio."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("av")

from conftest import ROOT  # noqa: E402
from mmit.config.schema import load_config  # noqa: E402
from mmit.constants import IGNORE_INDEX  # noqa: E402
from mmit.data.sample import Media, Sample, SampleError, Turn  # noqa: E402
from mmit.data.video import decode_video, segment_start_indices  # noqa: E402
from mmit.families import get_family  # noqa: E402
from mmit.templates.labels import encode_conversation, encode_prompt  # noqa: E402

TINY = ROOT / "configs" / "video_llama" / "tiny.yaml"
VIDEOS = ROOT / "demo_data" / "videos"


def tiny_cfg(*overrides):
    return load_config(str(TINY), [f"--data.path={ROOT / 'demo_data' / 'video_llama_demo.json'}",
                                   f"--data.media_root={ROOT / 'demo_data'}", *overrides])


@pytest.fixture(scope="module")
def built():
    cfg = tiny_cfg()
    fam = get_family("video-llama")
    model, tok = fam.build(cfg)
    return cfg, fam, model, tok, fam.processor(cfg, model, tok)


def sample(sid, text, answer, *media):
    return Sample(id=sid, turns=[Turn("user", text), Turn("assistant", answer)], media=list(media))


def video(name, kind="video"):
    return Media(kind=kind, path=str(VIDEOS / name))


# -- templates --------------------------------------------------------------------------------------
def test_video_llama_templates_render_and_label_as_the_original(built):
    _, _, _, tok, _ = built
    turns = [Turn("user", "Hi?"), Turn("assistant", "A dog."), Turn("user", "Colour?"), Turn("assistant", "Brown.")]
    ids, labels = encode_conversation(tok, turns, "video-llama", "s")
    # video_instruct_dataset.py preprocess: header "{system}\n\n", "###Human: q\n###Assistant: a\n", final "###"
    assert tok.decode(ids) == "<s>\n\n###Human: Hi?\n###Assistant: A dog.\n###Human: Colour?\n###Assistant: Brown.\n###"
    learned = tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert learned == " A dog.\n### Brown.\n###"
    assert tok.decode(encode_prompt(tok, turns[:1], "video-llama")).endswith("###Human: Hi?\n###Assistant:")
    ids2, _ = encode_conversation(tok, turns[:2], "video-llama-2", "s")
    # llama_v2_video_conversation: system " ", wrapped as <<SYS>>\n \n<</SYS>>\n\n
    assert tok.decode(ids2) == "<s>[INST] <<SYS>>\n \n<</SYS>>\n\nHi? [/INST] A dog. </s>"


# -- processor --------------------------------------------------------------------------------------
def test_video_prompt_layout_frame_times_and_labels(built):
    cfg, _, model, tok, proc = built
    s = sample("v", "<video>\nWhat happens?", "Iron Man flies.", video("ironman.mp4"))
    item = proc(s)
    ids = item["input_ids"].tolist()
    text = tok.decode(ids)
    mv = model.num_video_query_tokens
    assert ids.count(proc.visual_token_id) == mv and ids.count(proc.audio_token_id) == 0
    # Video-LLaMA's load_video indices and message: round(index / fps, 1) of segment starts
    dv = decode_video((VIDEOS / "ironman.mp4").read_bytes(), "x", cfg.model.num_frames, sampling="segment-start")
    assert dv.indices == segment_start_indices(dv.num_total_frames, cfg.model.num_frames)
    secs = ", ".join(str(round(i / dv.fps, 1)) for i in dv.indices)
    want = ("<Video>" + "<ImageHere>" * mv + f"</Video> The video contains {cfg.model.num_frames} frames sampled at "
            f"{secs} seconds. What happens?")
    assert want in text.replace(" <ImageHere>", "<ImageHere>"), text
    learned = tok.decode([t for t, l in zip(ids, item["labels"].tolist()) if l != IGNORE_INDEX])
    assert learned == " Iron Man flies.\n###"
    kinds = [(k, tuple(v.shape)) for k, v in item["media"]]
    assert kinds == [("video", (cfg.model.num_frames, 3, 32, 32))]


def test_mixed_batch_positions_point_at_each_items_tokens(built):
    _, fam, model, _, proc = built
    items = [proc(sample("a", "<audio>\n<video>\nWhat?", "A dog barks.", video("dog_barking.mp4"),
                         video("dog_barking.mp4", "audio"))),
             proc(sample("b", "<image>\nAnd this?", "A statue.",
                         Media(kind="image", path=str(ROOT / "demo_data" / "images" / "statue_of_liberty.jpg")))),
             proc(sample("c", "<video>\nFirst <video>\nthen?", "Yoga, then baseball.", video("yoga.mp4"),
                         video("hitting_baseball.mp4")))]
    b = proc.collate(items)
    mv, ma = model.num_video_query_tokens, model.num_audio_query_tokens
    assert b.media["video"].sample_index.tolist() == [0, 2, 2] and b.media["image"].sample_index.tolist() == [1]
    assert b.media["audio"].sample_index.tolist() == [0]
    for kind, tok_id, n in (("video", proc.visual_token_id, mv), ("image", proc.visual_token_id, mv),
                            ("audio", proc.audio_token_id, ma)):
        m = b.media[kind]
        for row, pos in zip(m.sample_index.tolist(), m.position.tolist()):
            assert b.input_ids[row, pos:pos + n].eq(tok_id).all()
            assert pos == 0 or b.input_ids[row, pos - 1] != tok_id
    # the splice puts each branch output at its own positions, in text order
    model.eval()
    with torch.no_grad():
        emb = model.embed_batch(b)
        v0 = model.encode_video(b.media["video"].values[:1])
        a0 = model.encode_audio(b.media["audio"].values)
    p = b.media["video"].position[0]
    assert torch.allclose(emb[0, p:p + mv], v0[0], atol=1e-6)
    p = b.media["audio"].position[0]
    assert torch.allclose(emb[0, p:p + ma], a0[0], atol=1e-6)
    assert torch.isfinite(fam.loss(model, b))


def test_media_skips_name_their_reason(built):
    cfg, fam, model, tok, proc = built
    silent = sample("s", "<audio>\nWhat do you hear?", "Nothing.", video("silence_girl.mp4", "audio"))
    skip_proc = fam.processor(tiny_cfg("--model.no_audio=skip"), model, tok)
    with pytest.raises(SampleError) as e:
        skip_proc(silent)
    assert e.value.reason == "no-audio-track"
    item = proc(silent)  # tiny.yaml: no_audio silence -> zeros of the video's length
    assert [k for k, _ in item["media"]] == ["audio"]
    no_audio = fam.processor(tiny_cfg(), model, tok)
    no_audio.audio_features = None  # a model without an audio branch
    with pytest.raises(SampleError) as e:
        no_audio(silent)
    assert e.value.reason == "unsupported-media"
    short = fam.processor(tiny_cfg("--model.max_length=20"), model, tok)
    with pytest.raises(SampleError) as e:
        short(sample("l", "<video>\nWhat?", "x", video("yoga.mp4")))
    assert e.value.reason == "too-long-for-images"
    with pytest.raises(SampleError) as e:
        proc(sample("m", "<video>\nWhat?", "x", Media(kind="video", path=str(ROOT / "demo_data" / "nope.mp4"))))
    assert e.value.reason == "missing-media"


def test_encode_video_adds_one_position_vector_per_frame(built):
    _, _, model, _, _ = built
    model.eval()
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        got = model.encode_video(frames)
        q = model.image_qformer(model.vision_tower(frames.flatten(0, 1))).reshape(2, 3, -1, 64)
        pos = model.frame_position_embedding.weight[:3]
        want = model.video_qformer((q + pos[None, :, None, :]).flatten(1, 2))
        model.frame_position_embedding.weight[1] += 1.0  # frame 1's row is used, rows >= 3 are not
        moved = model.encode_video(frames)
        model.frame_position_embedding.weight[1] -= 1.0
        model.frame_position_embedding.weight[5] += 1.0
        unmoved = model.encode_video(frames)
        model.frame_position_embedding.weight[5] -= 1.0
    assert got.shape == (2, model.num_video_query_tokens, model.llm.config.hidden_size)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, moved, atol=1e-4) and torch.allclose(got, unmoved, atol=1e-6)
    with pytest.raises(ValueError, match="max_frame_pos"):
        model.encode_video(torch.randn(1, model.frame_position_embedding.num_embeddings + 1, 3, 32, 32))


@pytest.mark.parametrize("branch, trains", [("video", {"video_qformer", "frame_position_embedding"}),
                                            ("audio", {"audio_qformer", "audio_position_embedding"}),
                                            ("both", {"video_qformer", "frame_position_embedding", "audio_qformer",
                                                      "audio_position_embedding"})])
def test_stage_align_trains_only_the_chosen_branch(branch, trains):
    cfg = tiny_cfg("--train.stage=align", f"--model.train_branch={branch}")
    got = get_family("video-llama").trainable_modules(cfg)
    assert {k for k, v in got.items() if v} == trains
    full = get_family("video-llama").trainable_modules(tiny_cfg("--train.stage=full"))
    assert full["vision_tower"] and full["image_qformer"] and full["llm"] and not full["audio_encoder"]


def test_frozen_image_qformer_stays_in_eval_mode(built):
    _, _, model, _, _ = built
    model.image_qformer.requires_grad_(False)
    model.train()
    assert not model.image_qformer.training and model.video_qformer.training
    model.image_qformer.requires_grad_(True)
    model.train()
    assert model.image_qformer.training


# -- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from mmit.training.trainer import train

    out = tmp_path_factory.mktemp("video-llama") / "run"
    cfg = tiny_cfg(f"--train.output_dir={out}", "--train.progress_bar=false", "--train.logging_steps=2")
    train(cfg)
    return out


def test_tiny_config_trains_on_video_and_audio_and_the_loss_falls(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    k = max(1, len(losses) // 10)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < 0.5 * first, (first, last)
    # every bundled record was used: no skip (the silent video gets silence under no_audio: silence)
    assert not [r for r in rows if r.get("skipped")], rows[-1]


def test_generate_answers_about_a_video(trained_run):
    from mmit.inference import generate, load_for_inference

    model, proc, _ = load_for_inference(trained_run)
    ans = generate(model, proc, "What is happening in this video?", video=str(VIDEOS / "ironman.mp4"),
                   max_new_tokens=24)
    assert re.search(r"iron man|armor", ans.text, re.I), ans.text
    assert "###" not in ans.text


def test_imagebind_audio_branch_one_embedding_per_clip():
    """The paper's audio encoder: ImageBind's audio tower (optional CC BY-NC-SA extra), one embedding per
    2 s clip, so the audio position embedding indexes clips directly."""
    from mmit.models.audio import imagebind_available

    if not imagebind_available():
        pytest.skip("imagebind-audio needs the optional ImageBind package (CC BY-NC-SA 4.0): "
                    "pip install --no-deps imagebind-unofficial==0.1.1 && pip install ftfy regex iopath einops")
    cfg = tiny_cfg("--model.audio_encoder.name=tiny-imagebind-audio", "--model.audio_encoder.clip_seconds=2.0",
                   "--model.audio_encoder.num_clips=3")
    fam = get_family("video-llama")
    model, tok = fam.build(cfg)
    proc = fam.processor(cfg, model, tok)
    item = proc(sample("d", "<audio>\nWhat is it?", "A dog barks.",
                       Media(kind="audio", path=str(ROOT / "demo_data" / "audio" / "dog_bark.wav"))))
    (kind, feats), = item["media"]
    assert kind == "audio" and feats.shape == (3, 1, 128, 204)  # ImageBind's kaldi fbank per clip
    batch = proc.collate([item])
    assert model.audio_encoder(batch.media["audio"].values).shape[1] == 3  # one token per clip
    assert torch.isfinite(fam.loss(model, batch))


def _keys(ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_checkpoint_holds_the_frozen_image_qformer(trained_run):
    """Its weights come from image_qformer.init_from at training time, which loading does not redo."""
    from mmit.training.checkpoint import load_model_from_checkpoint

    keys = _keys(trained_run / "final")
    assert any(k.startswith("image_qformer.") for k in keys)
    assert not any(k.startswith(("vision_tower.", "audio_encoder.")) for k in keys)  # rebuilt from their source
    a, _, _ = load_model_from_checkpoint(trained_run)
    b, _, _ = load_model_from_checkpoint(trained_run)
    for (n, p), (_, q) in zip(a.image_qformer.named_parameters(), b.image_qformer.named_parameters()):
        assert torch.equal(p, q), n


def test_audio_stage_from_a_video_run_keeps_the_video_branch(tmp_path):
    """AL stage: model.init_from gives the (frozen) video branch; its checkpoint must still hold it."""
    from mmit.training.checkpoint import load_model_from_checkpoint
    from mmit.training.trainer import train

    common = ["--train.max_steps=2", "--train.batch_size=4", "--train.progress_bar=false", "--train.stage=align"]
    train(tiny_cfg(*common, f"--train.output_dir={tmp_path / 'vl'}", "--model.train_branch=video"))
    train(tiny_cfg(*common, f"--train.output_dir={tmp_path / 'al'}", "--model.train_branch=audio",
                   f"--model.init_from={tmp_path / 'vl'}"))
    vl, al = _keys(tmp_path / "vl" / "final"), _keys(tmp_path / "al" / "final")
    assert any(k.startswith("audio_qformer.") for k in al) and not any(k.startswith("audio_qformer.") for k in vl)
    assert {k for k in vl if k.startswith("video_qformer.")} <= al
    m_vl, _, _ = load_model_from_checkpoint(tmp_path / "vl")
    m_al, _, _ = load_model_from_checkpoint(tmp_path / "al")
    for (n, p), (_, q) in zip(m_vl.video_qformer.named_parameters(), m_al.video_qformer.named_parameters()):
        assert torch.equal(p, q), n


def test_generation_never_emits_patch_tokens(built, monkeypatch):
    _, _, model, _, proc = built
    model.eval()
    seen = []
    real = model.llm.generate

    def spy(**kw):
        seen.append(kw.get("suppress_tokens"))
        return real(**kw)

    monkeypatch.setattr(model.llm, "generate", spy)
    batch = proc.collate_prompts([proc.prompt([Turn("user", "Hi?")], [])])
    scores = model.generate_tokens(batch, max_new_tokens=2, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True).scores
    assert seen[-1] == [proc.visual_token_id, proc.audio_token_id]
    assert all(torch.isinf(s[0, [proc.visual_token_id, proc.audio_token_id]]).all() for s in scores)
    model.generate_tokens(batch, max_new_tokens=1, do_sample=False, suppress_tokens=[])
    assert seen[-1] == []


def test_video_heldout_suite_on_the_trained_model(trained_run, tmp_path, monkeypatch):
    """configs/eval/video_heldout.yaml (MSVD-QA and MSRVTT-QA ranked, iVQA generated) on the bundled clips."""
    from mmit.cli import main as cli

    monkeypatch.chdir(ROOT)
    out = tmp_path / "eval"
    assert cli(["eval", "--config_path", "configs/eval/video_heldout.yaml", "--checkpoint", str(trained_run),
                "--output", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["tasks"]) == ["msvd-qa", "msrvtt-qa", "ivqa"]
    for name, t in res["tasks"].items():
        assert t["n"] == 5 and t["skipped"] == {} and 0.0 <= t[t["metric"]] <= 1.0, (name, t)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 15 and not any("###" in p["prediction"] for p in preds)


def test_bad_media_are_counted_skips_with_their_reason(built, tmp_path):
    from mmit.data.stats import SkipCounter

    _, _, _, _, proc = built
    good = (VIDEOS / "ironman.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    (tmp_path / "empty.wav").write_bytes(b"")
    samples = [sample("t", "<video>\nWhat?", "x", Media(kind="video", path=str(tmp_path / "truncated.mp4"))),
               sample("x", "<video>\nWhat?", "x", Media(kind="video", path=str(tmp_path / "text.mp4"))),
               sample("e", "<audio>\nWhat?", "x", Media(kind="audio", path=str(tmp_path / "empty.wav"))),
               sample("ok", "<video>\nWhat?", "x", Media(kind="video", path=str(VIDEOS / "yoga.mp4")))]
    stats = SkipCounter()
    items = [it for it in (proc.try_call(s, stats) for s in samples) if it is not None]
    assert [it["id"] for it in items] == ["ok"]
    assert stats.as_dict() == {"undecodable-video": 2, "undecodable-audio": 1}
