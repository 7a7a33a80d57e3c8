"""Training configs/instructblip/tiny.yaml with the shared trainer: only the Q-Former trains, the frozen
tower and LLM stay bit-identical, the loss falls, and ``mmit generate`` answers from the result."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import DEMO_IMAGES, DEMO_JSON, ROOT
from mmit.cli import main as cli
from mmit.config.schema import load_config

CONFIG = ROOT / "configs" / "instructblip" / "tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import copy

    import mmit.families.instructblip.family as fam
    from mmit.training.trainer import train

    tmp = tmp_path_factory.mktemp("ib-train")
    cfg = load_config(str(CONFIG), [f"--train.output_dir={tmp / 'run'}", "--train.max_steps=6", "--train.batch_size=4",
                                    "--train.warmup_ratio=0", "--train.progress_bar=false",
                                    f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}"])
    built, initial = [], []
    original = fam.InstructBlipFamily.prepare_for_training

    def prepare_for_training(self, model, c):
        original(self, model, c)
        built.append(model)  # the model the trainer trains, and its weights when training starts
        initial.append(copy.deepcopy(model.state_dict()))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fam.InstructBlipFamily, "prepare_for_training", prepare_for_training)
        run = train(cfg)
    assert len(built) == 1
    fresh, tok = fam.InstructBlipFamily().build(cfg)  # pure: the Q-Former is random until loaded
    fresh.load_state_dict(initial[0])
    return run, built[0], fresh, tok, cfg


def test_trainer_applies_the_qformer_init_before_training(trained):
    from transformers import BertModel

    from mmit.models.tiny_seq2seq import resolve_bert_path

    _, _, fresh, _, cfg = trained
    assert cfg.model.qformer.init_from == "tiny-bert" and not cfg.model.init_from
    bert = BertModel.from_pretrained(resolve_bert_path("tiny-bert"), add_pooling_layer=False)
    ours = fresh.qformer.qformer.embeddings.word_embeddings.weight
    assert torch.equal(ours[:bert.config.vocab_size], bert.embeddings.word_embeddings.weight)


def test_only_qformer_trains_and_frozen_weights_are_bit_identical(trained):
    run, model, fresh, _, _ = trained
    after, before = dict(model.named_parameters()), dict(fresh.named_parameters())
    frozen = [n for n in after if n.startswith(("vision_tower.", "llm."))]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)
    assert all(not after[n].requires_grad for n in frozen)
    assert all(p.requires_grad for p in model.qformer.parameters())
    saved = load_file(str(run / "final" / "model.safetensors"))
    assert saved and all(k.startswith("qformer.") for k in saved)
    assert {"qformer.query_tokens", "qformer.language_projection.weight"} <= set(saved)
    # the Q-Former did move
    assert not torch.equal(saved["qformer.language_projection.weight"], before["qformer.language_projection.weight"])


def test_checkpoint_holds_the_qformer_tokenizer(trained):
    run, model, _, _, _ = trained
    final = run / "final"
    assert (final / "qformer_tokenizer").is_dir()
    ckpt_cfg = load_config(str(final / "config.yaml"))
    assert ckpt_cfg.family == "instructblip" and ckpt_cfg.model.qformer.tokenizer == "qformer_tokenizer"


def test_loss_falls_on_a_fixed_batch(trained):
    from mmit.data.stats import SkipCounter
    from mmit.families import get_family
    from mmit.inference import load_for_inference
    from mmit.training.data import SampleStream

    run, _, fresh, tok, cfg = trained
    fam = get_family("instructblip")
    model, processor, _ = load_for_inference(run)
    stats = SkipCounter()
    items = [it for it in (processor.try_call(s, stats) for s in list(SampleStream(cfg.data, 0).epoch(0))[:8])
             if it is not None]
    assert len(items) >= 4
    batch = processor.collate(items)
    with torch.no_grad():
        before = float(fam.loss(fresh.eval(), batch))
        after = float(fam.loss(model, batch))
    print(f"\n[tiny instructblip] fixed-batch loss {before:.3f} -> {after:.3f}")
    assert after < before - 0.1, (before, after)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6


def test_generate_cli_on_trained_checkpoint(trained, capsys):
    run = trained[0]
    assert cli(["generate", "--checkpoint", str(run), "--image", str(DEMO_IMAGES / "dog_running.jpg"),
                "--prompt", "What color is the dog?", "--max-new-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"text", "token_ids"} and 0 < len(out["token_ids"]) <= 5
    assert out["text"] == trained[3].decode(out["token_ids"], skip_special_tokens=True).strip()
