"""The Flamingo family (OpenFlamingo arXiv 2308.01390, Otter arXiv 2305.03726): parity with the
``open_flamingo`` package on the same weights, Otter's format and labels, OpenFlamingo state dicts in and
out, training on MIMIC-IT-shaped in-context samples, several images through ``mmit generate``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import DEMO_IMAGES, ROOT, SHARED_SAMPLES
from mmit.data.batch import Batch, MediaTensors
from mmit.data.sample import Media, Sample, Turn

open_flamingo = pytest.importorskip("open_flamingo")

# OpenFlamingo's Flamingo hard-codes these sizes (helpers.py defaults); the parity model uses them.
OF_SIZES = ["--model.perceiver_depth=6", "--model.perceiver_heads=8", "--model.perceiver_dim_head=64",
            "--model.num_latents=64", "--model.xattn_heads=8", "--model.xattn_dim_head=64",
            "--model.cross_attn_every_n_layers=1"]


def _cfg(*overrides):
    from mmit.config.schema import load_config

    return load_config(str(ROOT / "configs" / "otter" / "tiny.yaml"), list(overrides))


@pytest.fixture(scope="module")
def pair():
    """Our model and open_flamingo's Flamingo holding the same weights, gates non-zero."""
    from mmit.families import get_family
    from mmit.families.flamingo.reference import build_reference, tie_to_reference
    from mmit.models.llm import resolve_llm_path

    torch.manual_seed(0)
    model, tok = get_family("flamingo").build(_cfg(*OF_SIZES))
    ref = build_reference(model, resolve_llm_path("tiny-llama"), every_n=1)
    tie_to_reference(model, ref)
    return model.eval(), ref.eval(), tok


def _inputs(model, n_images, seed=0):
    """Text before the first image, then ``n_images`` chunks of <image> + text + <|endofchunk|>."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 300, (3,), generator=g).tolist()
    for _ in range(n_images):
        ids += [model.media_token_id] + torch.randint(10, 300, (5,), generator=g).tolist() + [model.endofchunk_token_id]
    size = model.vision_tower.image_size
    vision_x = torch.randn(1, n_images, 1, 3, size, size, generator=g)
    return torch.tensor([ids]), vision_x


@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_logits_match_open_flamingo(pair, n_images):
    model, ref, _ = pair
    ids, vision_x = _inputs(model, n_images, seed=n_images)
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), vision_x=vision_x).logits
        theirs = ref(vision_x, ids, torch.ones_like(ids)).logits
    assert float((ours - theirs).abs().max()) < 1e-4
    # the images matter: other pixels change the logits after the first image
    with torch.no_grad():
        other = model(ids, torch.ones_like(ids), vision_x=vision_x.flip(0) + 1.0).logits
    assert float((other - ours).abs().max()) > 1e-3


def test_greedy_tokens_match_a_loop_over_open_flamingo(pair):
    model, ref, _ = pair
    ids, vision_x = _inputs(model, 2, seed=7)
    n = ids.shape[1]
    where = (ids[0] == model.media_token_id).nonzero().flatten()
    batch = Batch(["x"], ids, torch.ones_like(ids),
                  media={"image": MediaTensors(vision_x[0, :, 0], torch.zeros(2, dtype=torch.long), where)})
    got = model.generate_tokens(batch, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)[0].tolist()
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = ref(vision_x, seq, torch.ones_like(seq)).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    assert got == seq[0, n:].tolist()


def test_with_gates_at_zero_the_logits_are_the_bare_llm(tmp_path):
    from transformers import AutoModelForCausalLM

    from mmit.families import get_family
    from mmit.models.llm import resolve_llm_path

    model, tok = get_family("flamingo").build(_cfg())
    bare = AutoModelForCausalLM.from_pretrained(resolve_llm_path("tiny-llama"), dtype=torch.float32)
    bare.resize_token_embeddings(len(tok))
    bare.get_input_embeddings().weight.data.copy_(model.llm.get_input_embeddings().weight.data)
    bare.get_output_embeddings().weight.data.copy_(model.llm.get_output_embeddings().weight.data)
    ids, vision_x = _inputs(model, 2)
    with torch.no_grad():
        assert torch.equal(model(ids, vision_x=vision_x).logits, bare(ids).logits)


def test_otter_format_and_labels():
    from mmit.families import get_family
    from mmit.families.flamingo.processor import OtterProcessor

    model, tok = get_family("flamingo").build(_cfg())
    im = str(DEMO_IMAGES / "dog_running.jpg")
    s = Sample("q", [Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A dog."),
                     Turn("user", "<image>\nAnd this?"), Turn("assistant", "A cat.")],
               [Media("image", path=im), Media("image", path=im)])
    for in_context in (True, False):
        item = OtterProcessor(tok, model.vision_tower.image_processor, 512, in_context)(s)
        text = tok.decode(item["input_ids"])
        assert text == ("<s><image>User:What is it? GPT:<answer>A dog.<|endofchunk|>"
                        "<image>User:And this? GPT:<answer>A cat.<|endofchunk|>")
        learned = tok.decode(item["input_ids"][item["labels"] != -100])
        assert learned == ("A dog.<|endofchunk|>A cat.<|endofchunk|>" if in_context else "A cat.<|endofchunk|>")
        assert item["pixel_values"].shape[0] == 2
    proc = OtterProcessor(tok, model.vision_tower.image_processor, 512)
    batch = proc.collate([proc(s), proc(Sample("t", [Turn("user", "Hi"), Turn("assistant", "Hello.")]))])
    assert batch.media["image"].sample_index.tolist() == [0, 0]
    assert all(int(batch.input_ids[0, p]) == model.media_token_id for p in batch.media["image"].position.tolist())
    prompt = tok.decode(proc.prompt([Turn("user", "<image>\nWhat is it?")], [])["input_ids"])
    assert prompt.endswith("<image>User:What is it? GPT:<answer>")


def _train(tmp_path, *extra):
    from mmit.config.schema import load_config
    from mmit.families.flamingo.mimicit_demo import write_mimicit_demo
    from mmit.training.trainer import train

    images = SHARED_SAMPLES / "otter" / "images"
    write_mimicit_demo(images if images.is_dir() else DEMO_IMAGES, tmp_path / "data", shots=2)
    cfg = load_config(str(ROOT / "configs" / "otter" / "tiny.yaml"),
                      ["--data.format=mimic-it", f"--data.path={tmp_path / 'data' / 'LA_instructions.json'}",
                       f"--data.media_root={tmp_path / 'data'}", f"--train.output_dir={tmp_path / 'run'}",
                       "--train.progress_bar=false", *extra])
    return train(cfg)


def test_tiny_config_learns_mimicit_in_context_samples(tmp_path):
    from mmit.training.metrics import loss_fell, read_metrics

    run = _train(tmp_path, "--train.max_steps=100")
    first, last = loss_fell(read_metrics(run / "metrics.jsonl"))
    assert last < 0.5 * first, (first, last)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_total"] == 0


def test_openflamingo_export_import_round_trip_and_strict_load(tmp_path, pair):
    from mmit.cli import main

    _, ref, _ = pair
    run = _train(tmp_path, "--train.max_steps=2", "--train.stage=align", *OF_SIZES)
    assert main(["export", "--checkpoint", str(run), "--format", "openflamingo", "--output", str(tmp_path / "of")]) == 0
    exported = load_file(str(tmp_path / "of" / "checkpoint.safetensors"))
    assert set(exported) == set(ref.state_dict()), set(exported) ^ set(ref.state_dict())
    strict = copy.deepcopy(ref)
    strict.load_state_dict(exported, strict=True)  # open_flamingo reads every tensor under its own names
    assert main(["import", "--format", "openflamingo", "--input", str(tmp_path / "of"), "--output",
                 str(tmp_path / "back")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "back"), "--format", "openflamingo", "--output",
                 str(tmp_path / "of2")]) == 0
    again = load_file(str(tmp_path / "of2" / "checkpoint.safetensors"))
    assert again.keys() == exported.keys() and all(torch.equal(again[k], exported[k]) for k in exported)


def test_generate_with_several_images(tmp_path, capsys):
    from mmit.cli import main

    run = _train(tmp_path, "--train.max_steps=2", "--train.stage=align")
    img = [str(DEMO_IMAGES / "dog_running.jpg"), str(DEMO_IMAGES / "extreme_ironing.jpg")]
    args = ["generate", "--checkpoint", str(run), "--image", img[0], "--image", img[1], "--max-new-tokens", "3"]
    assert main(args + ["--prompt", "<image>First. <image>Second, what differs?", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) <= 3
    assert main(args + ["--prompt", "<image>Only one marker"]) == 2
    assert "2 image(s)" in capsys.readouterr().err
