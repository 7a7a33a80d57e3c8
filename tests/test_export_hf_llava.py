"""``mmit export --format hf-llava`` / ``mmit import``: plain transformers reproduces mmit exactly."""

import json

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES, tiny_run_config
from mmit.cli import main as cli
from mmit.training.trainer import train

PROMPT = "What is unusual about this image?"
IMAGE = DEMO_IMAGES / "extreme_ironing.jpg"  # 570x380: not square, so `pad` matters


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_run_config(tmp, stage="full", max_steps=8, lr=3e-3)
    return train(cfg)


def _mmit_generate(ckpt, capsys, n=12):
    assert cli(["generate", "--checkpoint", str(ckpt), "--image", str(IMAGE), "--prompt", PROMPT,
                "--max-new-tokens", str(n), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_export_gives_same_greedy_tokens_and_logits(trained, tmp_path, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmit.data.collate import expand_image_tokens
    from mmit.inference import prompt_turns
    from mmit.templates.labels import encode_prompt
    from mmit.training.checkpoint import load_model_from_checkpoint

    ours = _mmit_generate(trained, capsys)
    assert len(ours["token_ids"]) > 0
    out = tmp_path / "hf"
    assert cli(["export", "--checkpoint", str(trained), "--format", "hf-llava", "--output", str(out)]) == 0
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(IMAGE).convert("RGB")
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        gen = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
    new = gen[0, inputs["input_ids"].shape[1]:].tolist()
    while new and new[-1] == processor.tokenizer.pad_token_id:
        new.pop()
    assert new == ours["token_ids"]

    # Same prompt ids, same pixels, logits within 1e-4.
    model, tok, cfg = load_model_from_checkpoint(trained)
    ids, _, _ = expand_image_tokens(encode_prompt(tok, prompt_turns(PROMPT, True), cfg.model.template), None,
                                    model.image_token_id, model.num_image_tokens)
    assert inputs["input_ids"][0].tolist() == ids
    px = model.vision_tower.image_processor([image])
    assert torch.allclose(px, inputs["pixel_values"], atol=1e-5)
    with torch.no_grad():
        a = model(torch.tensor([ids]), pixel_values=px).logits
        b = hf(**inputs).logits
    assert float((a - b).abs().max()) < 1e-4


def test_import_round_trip(trained, tmp_path, capsys):
    ours = _mmit_generate(trained, capsys)
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert cli(["export", "--checkpoint", str(trained), "--format", "hf-llava", "--output", str(hf_dir)]) == 0
    assert cli(["import", "--format", "hf-llava", "--input", str(hf_dir), "--output", str(back)]) == 0
    again = _mmit_generate(back, capsys)
    assert again == ours


def test_export_refuses_a_model_that_is_not_llava_shaped(tmp_path, capsys):
    cfg = tiny_run_config(tmp_path, max_steps=1)
    cfg.model.projector.name = "linear"
    run = train(cfg)
    rc = cli(["export", "--checkpoint", str(run), "--format", "hf-llava", "--output", str(tmp_path / "x")])
    assert rc == 2
    assert "mlp2x-gelu" in capsys.readouterr().err
