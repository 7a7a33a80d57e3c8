"""LoRA / QLoRA through peft (``train.lora``): what trains, peft's files in checkpoints, exact resume,
``mmit export --merge-lora``, the QLoRA error on CPU, and the other text families."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import DEMO_IMAGES, ROOT, tiny_run_config
from mmit.cli import main as cli
from mmit.training.lora import ADAPTER_DIR, QLoRAUnavailableError, has_lora, lora_layers
from mmit.training.metrics import read_metrics
from mmit.training.trainer import train

PROMPT = "What is unusual about this image?"
IMAGE = DEMO_IMAGES / "extreme_ironing.jpg"
N_LINEAR = 14  # tiny-llama: 2 layers x (q, k, v, o, gate, up, down); lm_head is left out


def lora_config(tmp, **train):
    """The tiny LLaVA run with LoRA (r 8) and gradient checkpointing, a checkpoint every 4 steps."""
    settings = dict(max_steps=12, save_steps=4, lr=3e-3, warmup_ratio=0.1, gradient_checkpointing=True)
    cfg = tiny_run_config(tmp, **{**settings, **train})
    cfg.train.lora.enabled, cfg.train.lora.r, cfg.train.lora.alpha = True, 8, 16
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(lora_config(tmp_path_factory.mktemp("lora")))


def _table(run_dir) -> dict:
    """The parameter table of train.log: module -> (trainable, frozen)."""
    rows = {}
    for line in (run_dir / "train.log").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in ("vision_tower", "projector", "llm"):
            rows[parts[0]] = (int(parts[1].replace(",", "")), int(parts[2].replace(",", "")))
    return rows


def test_lora_lowers_the_loss_and_trains_only_adapters_and_projector(run):
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.97 * sum(losses[:3])
    final = run / "final"
    assert {k.split(".")[0] for k in load_file(str(final / "model.safetensors"))} == {"projector"}
    adapter = load_file(str(final / ADAPTER_DIR / "adapter_model.safetensors"))
    assert len(adapter) == 2 * N_LINEAR
    assert all(k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k) for k in adapter)
    assert not any("lm_head" in k for k in adapter)
    table = _table(run)
    assert table["vision_tower"][0] == 0 and table["projector"][1] == 0
    assert table["llm"][0] == sum(v.numel() for v in adapter.values()) and table["llm"][1] > 10 * table["llm"][0]


def test_checkpoint_holds_peft_files_and_loads_in_a_fresh_process(run, tmp_path):
    from peft import PeftModel

    from mmit.config.components import LLMConfig
    from mmit.inference import generate, load_for_inference
    from mmit.models.llm import load_llm

    folder = run / "final" / ADAPTER_DIR
    conf = json.loads((folder / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 8 and conf["lora_alpha"] == 16 and conf["bias"] == "none"
    model, processor, _ = load_for_inference(run)
    assert has_lora(model) and len(lora_layers(model.llm)) == N_LINEAR
    # peft's own loader reads the folder onto the plain LLM and gives the same logits
    base, _, _ = load_llm(LLMConfig(name_or_path="tiny-llama"))
    ref = PeftModel.from_pretrained(base, str(folder)).eval()
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(model.llm(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-6)
    ours = generate(model, processor, PROMPT, IMAGE, max_new_tokens=8).token_ids
    code = ("import json, sys; from mmit.inference import generate, load_for_inference; "
            "m, p, _ = load_for_inference(sys.argv[1]); "
            f"print(json.dumps(generate(m, p, {PROMPT!r}, sys.argv[2], max_new_tokens=8).token_ids))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(run), str(IMAGE)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ours
    assert list(tmp_path.iterdir()) == []  # loading wrote nothing


def test_merged_export_gives_the_unmerged_greedy_tokens(run, tmp_path, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmit.export.cli import merged_checkpoint
    from mmit.inference import generate, load_for_inference

    model, processor, _ = load_for_inference(run)
    ours = generate(model, processor, PROMPT, IMAGE, max_new_tokens=12).token_ids
    assert ours
    # the adapters matter: switched off, the logits change
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        on = model.llm(input_ids=ids).logits
        for layer in lora_layers(model.llm).values():
            layer.enable_adapters(False)
        off = model.llm(input_ids=ids).logits
    assert float((on - off).abs().max()) > 1e-3

    out = tmp_path / "hf"
    assert cli(["export", "--checkpoint", str(run), "--format", "hf-llava", "--output", str(out)]) == 2
    assert "--merge-lora" in capsys.readouterr().err and not out.exists()
    assert cli(["export", "--checkpoint", str(run), "--format", "hf-llava", "--output", str(out), "--merge-lora"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # the merged checkpoint was temporary
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    hf_proc = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    from PIL import Image

    inputs = hf_proc(images=Image.open(IMAGE).convert("RGB"),
                     text=hf_proc.apply_chat_template(messages, add_generation_prompt=True), return_tensors="pt")
    with torch.no_grad():
        gen = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
    new = gen[0, inputs["input_ids"].shape[1]:].tolist()
    while new and new[-1] == hf_proc.tokenizer.pad_token_id:
        new.pop()
    assert new == ours
    # the merged mmit checkpoint itself: no adapters, same tokens
    assert merged_checkpoint(run, tmp_path / "merged") == N_LINEAR
    merged, mproc, mcfg = load_for_inference(tmp_path / "merged")
    assert not has_lora(merged) and not mcfg.train.lora.enabled
    assert generate(merged, mproc, PROMPT, IMAGE, max_new_tokens=12).token_ids == ours


def _saved_tensors(ckpt) -> dict:
    """Every tensor a checkpoint holds: weights, adapters and (when saved) the optimizer state."""
    out = {"model/" + k: v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    out.update({"adapter/" + k: v for k, v in load_file(str(ckpt / ADAPTER_DIR / "adapter_model.safetensors")).items()})
    if (ckpt / "optimizer.pt").is_file():
        opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
        for i, st in opt["state"].items():
            out.update({f"optimizer/{i}/{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


def test_resume_with_adapters_is_exact(run, tmp_path):
    cfg = lora_config(tmp_path)
    train(cfg, stop_after_steps=6)  # interrupted after step 6: the latest checkpoint is step 4
    cfg.train.resume = True
    resumed = train(cfg)
    for ck in ("checkpoints/step-0000008", "checkpoints/step-0000012", "final"):
        a, b = _saved_tensors(run / ck), _saved_tensors(resumed / ck)
        assert a.keys() == b.keys() and len(a) > 2 * N_LINEAR
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    opt = torch.load(run / "checkpoints/step-0000012/optimizer.pt", weights_only=True)
    assert len(opt["state"]) == 2 * N_LINEAR + 4  # Adam state for the adapters and the projector only


def test_resume_with_other_lora_settings_is_refused(run, tmp_path):
    from mmit.training.checkpoint import latest_checkpoint

    cfg = lora_config(tmp_path, max_steps=4, save_steps=2)
    train(cfg, stop_after_steps=2)
    assert (latest_checkpoint(cfg.train.output_dir) / ADAPTER_DIR / "adapter_config.json").is_file()
    cfg.train.resume, cfg.train.lora.enabled = True, False
    with pytest.raises(ValueError, match="train.lora.enabled is false"):
        train(cfg)


def test_target_modules_pattern_and_errors():
    from mmit.config.components import LLMConfig
    from mmit.models.llm import load_llm
    from mmit.training.lora import target_linear_names

    llm, _, _ = load_llm(LLMConfig(name_or_path="tiny-llama"))
    assert len(target_linear_names(llm)) == N_LINEAR
    names = target_linear_names(llm, "q_proj|v_proj")
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)
    assert target_linear_names(llm, r"model\.layers\.0\.mlp\..*") == [f"model.layers.0.mlp.{p}_proj"
                                                                       for p in ("gate", "up", "down")]
    with pytest.raises(ValueError, match="matches no linear layer.*q_proj"):
        target_linear_names(llm, "query")


def test_qlora_without_cuda_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: QLoRA can run here")
    cfg = lora_config(tmp_path, max_steps=1)
    cfg.train.lora.quantize = "4bit"
    with pytest.raises(QLoRAUnavailableError) as e:
        train(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "CUDA GPU" in msg and "bitsandbytes" in msg and "mmit[qlora]" in msg
    assert isinstance(e.value, ValueError)  # `mmit train` prints it as one line
    cfg.train.lora.enabled = False
    with pytest.raises(ValueError, match="needs train.lora.enabled"):
        train(cfg)


@pytest.mark.parametrize("family", ["instructblip", "flamingo", "video-llama"])
def test_lora_on_the_other_text_families(family, tmp_path):
    from test_families import family_config

    from mmit.training.checkpoint import load_model_from_checkpoint

    cfg = family_config(family, tmp_path)
    cfg.train.lora.enabled, cfg.train.lora.r = True, 4
    run = train(cfg)
    held = load_file(str(run / "final" / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in held)
    if family == "flamingo":  # align: the new token rows of the frozen LLM still train beside the adapters
        assert any(k.startswith("llm.") and "embed" in k for k in held)
    model, _, _ = load_model_from_checkpoint(run)
    n = len(load_file(str(run / "final" / ADAPTER_DIR / "adapter_model.safetensors")))
    assert has_lora(model) and n == 2 * len(lora_layers(model.llm)) > 0
