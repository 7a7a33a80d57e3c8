"""InstructBLIP family: Q-Former connector, EVA tower, configs, checkpoints, the stage policy."""

from pathlib import Path

import pytest
import torch

from conftest import ROOT
from mmit.config.components import QFormerConfig, VisionTowerConfig
from mmit.config.schema import RunConfig, load_config
from ib_common import TINY_Q, _image, _model_cfg, _run_cfg, build_llama_model


@pytest.fixture(scope="module")
def llama_model():
    return build_llama_model()

def test_qformer_shapes_and_cross_attention_every_k_layers():
    from mmit.models.connectors.qformer import QFormerConnector

    conn = QFormerConnector(QFormerConfig(**TINY_Q), encoder_hidden_size=48, llm_hidden_size=80).eval()
    layers = conn.qformer.encoder.layer
    assert [lyr.has_cross_attention for lyr in layers] == [True, False, True]  # layer_idx % 2 == 0
    feats = torch.randn(3, 17, 48)
    ids = torch.tensor([[2, 10, 11, 3]] * 3)
    out = conn(feats, ids)
    assert out.shape == (3, 4, 80)
    # The instruction changes the query outputs (instruction-aware); the image does too.
    assert not torch.allclose(out, conn(feats, torch.tensor([[2, 20, 21, 3]] * 3)))
    assert not torch.allclose(out, conn(torch.randn(3, 17, 48), ids))
    with pytest.raises(ValueError, match="qformer_input_ids"):
        conn(feats)


def test_blip2_style_qformer_ignores_text():
    from mmit.models.connectors.qformer import QFormerConnector

    conn = QFormerConnector(QFormerConfig(**TINY_Q, text_input=False), 48, 80).eval()
    feats = torch.randn(2, 17, 48)
    a = conn(feats)
    assert a.shape == (2, 4, 80)
    assert torch.equal(a, conn(feats, torch.tensor([[2, 10, 3]] * 2)))


def test_qformer_init_from_bert_as_lavis():
    from transformers import BertModel

    from mmit.models.connectors.qformer import QFormerConnector
    from mmit.models.tiny_seq2seq import resolve_bert_path

    path = resolve_bert_path("tiny-bert")
    bert = BertModel.from_pretrained(path, add_pooling_layer=False).state_dict()
    cfg = QFormerConfig(**{**TINY_Q, "hidden_size": 64, "intermediate_size": 128, "vocab_size": 601})
    conn = QFormerConnector(cfg, 32, 32)
    assert conn.init_from_bert(path) > 0
    q = conn.qformer.state_dict()
    # Embeddings (LAVIS adds [DEC]: one extra row), self-attention and FFN come from BERT ...
    assert torch.equal(q["embeddings.word_embeddings.weight"][:600], bert["embeddings.word_embeddings.weight"])
    assert torch.equal(q["embeddings.layernorm.weight"], bert["embeddings.LayerNorm.weight"])
    assert torch.equal(q["encoder.layer.1.attention.attention.key.weight"], bert["encoder.layer.1.attention.self.key.weight"])
    # ... the query FFN starts as a copy of the text FFN ...
    for name in ("intermediate", "output"):
        assert torch.equal(q[f"encoder.layer.0.{name}_query.dense.weight"], bert[f"encoder.layer.0.{name}.dense.weight"])
    # ... cross-attention, and layers deeper than BERT's 2, stay random.
    assert not torch.equal(q["encoder.layer.0.crossattention.attention.query.weight"],
                           bert["encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(q["encoder.layer.2.intermediate.dense.weight"], bert["encoder.layer.0.intermediate.dense.weight"])
    with pytest.raises(ValueError, match="width"):
        QFormerConnector(QFormerConfig(**TINY_Q), 32, 32).init_from_bert(path)


# -- vision towers ------------------------------------------------------------------------------
def test_tiny_eva_tower_is_instructblip_vision_model_with_cls_and_ln_vision():
    from transformers import InstructBlipVisionModel

    from mmit.models.encoders import build_vision_tower
    from mmit.models.encoders.eva import ensure_tiny_eva

    tower = build_vision_tower(VisionTowerConfig(name="tiny-eva-vit", select_layer=-1, select_feature="cls_patch",
                                                 image_aspect_ratio="crop")).eval()
    px = tower.image_processor([_image()])
    assert px.shape == (1, 3, 32, 32)
    feats = tower(px)
    assert feats.shape == (1, 17, 64) and tower.num_tokens == 17
    ref = InstructBlipVisionModel.from_pretrained(str(ensure_tiny_eva())).eval()
    with torch.no_grad():
        assert torch.equal(feats, ref(pixel_values=px).last_hidden_state)
    patch = build_vision_tower(VisionTowerConfig(name="tiny-eva-vit", select_layer=-2, select_feature="patch"))
    assert patch(px).shape == (1, 16, 64)
    with pytest.raises(ValueError, match="name_or_path"):
        build_vision_tower(VisionTowerConfig(name="eva-vit-g"))


def test_clip_tower_works_with_the_qformer():
    from mmit.families.instructblip.model import build_instructblip

    cfg = _model_cfg(tower="tiny-clip-vit")
    cfg.vision_tower.select_layer = -2
    model, tok = build_instructblip(cfg)
    assert model.qformer.qformer.config.encoder_hidden_size == model.vision_tower.hidden_size == 64
    px = model.vision_tower.image_processor([_image()])
    q = torch.tensor([[2, 10, 3]])
    ids = torch.tensor([[model.image_token_id] * 4 + [20, 21, 22]])
    out = model(ids, pixel_values=px, qformer_input_ids=q, labels=ids.masked_fill(ids == model.image_token_id, -100))
    assert out.logits.shape[:2] == (1, 7) and torch.isfinite(out.loss)


def test_embed_needs_qformer_ids_unless_the_qformer_ignores_text(llama_model):
    """The model no longer derives the Q-Former's instruction from the LLM ids: the caller (the
    processor) passes it, and a missing one is an error for an instruction-aware Q-Former."""
    from mmit.families.instructblip.model import build_instructblip

    model, _ = llama_model
    px = model.vision_tower.image_processor([_image()])
    ids = torch.tensor([[model.image_token_id] * 4 + [20, 21, 22]])
    with pytest.raises(ValueError, match="qformer_input_ids"):
        model.embed(ids, px)
    with pytest.raises(ValueError, match="qformer_input_ids"):
        model(ids, pixel_values=px)
    q = model.qformer_tokenizer(["What is it?"], return_tensors="pt")
    with torch.no_grad():
        assert model.embed(ids, px, q["input_ids"], q["attention_mask"]).shape == (1, 7, model.llm.config.hidden_size)
    blip2, _ = build_instructblip(_model_cfg(text_input=False))
    with torch.no_grad():
        assert torch.isfinite(blip2.eval().embed(ids, px)).all()


@pytest.mark.parametrize("name", ["tiny", "vicuna7b", "flant5xl"])
def test_shipped_configs_load(name):
    from mmit.families.instructblip.config import InstructBlipConfig

    cfg = load_config(str(ROOT / "configs" / "instructblip" / f"{name}.yaml"))
    assert cfg.family == "instructblip" and cfg.train.stage == "align"
    assert isinstance(cfg.model, InstructBlipConfig)
    assert cfg.model.vision_tower.select_feature == "cls_patch" and cfg.model.qformer.text_input
    if name != "tiny":  # the paper's recipe (arXiv 2305.06500 §3.5)
        t = cfg.train
        assert (t.lr, t.weight_decay, t.lr_scheduler) == (1e-5, 0.05, "cosine")
        assert round(t.warmup_ratio * t.max_steps) == 1000
        assert cfg.model.qformer.num_query_tokens == 32 and cfg.model.qformer.cross_attention_frequency == 2
        assert cfg.model.vision_tower.name == "eva-vit-g"


def test_config_has_no_template_projector_or_max_length():
    """InstructBLIP uses no chat template and no projector: those keys are config errors now."""
    cfg = RunConfig.for_family("instructblip")
    assert {f for f in ("template", "projector", "max_length") if hasattr(cfg.model, f)} == set()
    assert (cfg.model.vision_tower.name, cfg.model.vision_tower.select_feature) == ("eva-vit-g", "cls_patch")
    for override in ("--model.template=vicuna-v1", "--model.max_length=512", "--model.projector.name=linear"):
        with pytest.raises(ValueError):
            load_config(str(ROOT / "configs" / "instructblip" / "tiny.yaml"), [override])


# -- Q-Former initialisation from BLIP-2 / InstructBLIP checkpoints, export refusals ---------------
def test_qformer_init_from_blip2_then_instructblip_folders(tmp_path):
    from transformers import Blip2Config, Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration, OPTConfig

    from mmit.families.instructblip.model import build_instructblip
    from test_instructblip_parity import _hf_folder

    q = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=600,
             max_position_embeddings=128, cross_attention_frequency=1)
    blip2 = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8), qformer_config=q, num_query_tokens=4,
        text_config=OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                              word_embed_proj_dim=16).to_dict()))
    with torch.no_grad():
        blip2.query_tokens.normal_()
    blip2.save_pretrained(tmp_path / "blip2")
    cfg = _model_cfg(**{k: v for k, v in q.items()}, num_query_tokens=4, init_from=f"tiny-bert-x,{tmp_path / 'blip2'}")
    model, _ = build_instructblip(cfg)  # pure by default: the (missing) init source is not read
    assert not torch.equal(model.qformer.query_tokens, blip2.query_tokens)
    with pytest.raises(Exception, match="tiny-bert-x"):
        build_instructblip(cfg, init_qformer_weights=True)
    cfg.qformer.init_from = str(tmp_path / "blip2")
    model, _ = build_instructblip(cfg, init_qformer_weights=True)
    ours, ref = model.qformer.qformer.state_dict(), blip2.qformer.state_dict()
    assert torch.equal(ours["embeddings.layernorm.weight"], ref["layernorm.weight"])
    assert torch.equal(ours["encoder.layer.1.crossattention.attention.key.weight"],
                       ref["encoder.layer.1.crossattention.attention.key.weight"])
    assert torch.equal(model.qformer.query_tokens, blip2.query_tokens)

    ib = _hf_folder(tmp_path / "ib", "llama")
    hf = InstructBlipForConditionalGeneration.from_pretrained(ib)
    cfg.qformer.init_from = str(ib)
    with pytest.raises(ValueError, match="does not fit"):  # the folder's Q-Former reads a 32-wide tower
        build_instructblip(cfg, init_qformer_weights=True)
    hf.vision_model.save_pretrained(tmp_path / "tower")
    cfg.vision_tower.name, cfg.vision_tower.name_or_path = "eva-vit-g", str(tmp_path / "tower")
    model, _ = build_instructblip(cfg, init_qformer_weights=True)
    assert all(torch.equal(v, hf.qformer.state_dict()[k]) for k, v in model.qformer.qformer.state_dict().items())
    assert torch.equal(model.qformer.query_tokens, hf.query_tokens)


def _save_like_the_trainer(path, model, tok, cfg):
    """A checkpoint written through the family's hooks, as the trainer writes one."""
    from mmit.families import get_family
    from mmit.training.checkpoint import save_checkpoint

    fam = get_family("instructblip")
    return save_checkpoint(path, model=model, cfg=fam.checkpoint_config(cfg), tokenizer=tok,
                           trainer_state={"step": 0}, extra=fam.save_extra)


def test_export_refuses_a_clip_tower(tmp_path, capsys):
    from mmit.cli import main as cli
    from mmit.families.instructblip.model import build_instructblip

    cfg = _run_cfg(tower="tiny-clip-vit")
    model, tok = build_instructblip(cfg.model)
    model.requires_grad_(False)
    model.qformer.requires_grad_(True)
    ckpt = _save_like_the_trainer(tmp_path / "ck", model, tok, cfg)
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "hf-instructblip", "--output", str(tmp_path / "x")]) == 2
    assert "EVA/InstructBLIP vision tower" in capsys.readouterr().err


def test_checkpoint_carries_the_qformer_tokenizer(tmp_path, llama_model):
    """checkpoint_config points qformer.tokenizer at the checkpoint's own qformer_tokenizer/ (relative,
    so the folder moves); loading reads it there and never applies qformer.init_from."""
    import shutil

    from mmit.families import get_family
    from mmit.families.instructblip.model import QFORMER_TOKENIZER_DIR
    from mmit.training.checkpoint import load_model_from_checkpoint

    model, tok = llama_model
    cfg = _run_cfg(init_from="tiny-bert-missing")  # an init source that cannot be read
    out = get_family("instructblip").checkpoint_config(cfg)
    assert out.model.qformer.tokenizer == QFORMER_TOKENIZER_DIR and cfg.model.qformer.tokenizer == "tiny-bert"
    model.requires_grad_(False)
    model.qformer.requires_grad_(True)
    try:
        ckpt = _save_like_the_trainer(tmp_path / "ck", model, tok, cfg)
    finally:
        model.requires_grad_(True)
    assert (ckpt / QFORMER_TOKENIZER_DIR / "tokenizer_config.json").is_file()
    assert "tokenizer: qformer_tokenizer" in (ckpt / "config.yaml").read_text()
    moved = Path(shutil.move(str(ckpt), str(tmp_path / "moved")))
    loaded, _, lcfg = load_model_from_checkpoint(moved)
    assert lcfg.model.qformer.tokenizer == str(moved / QFORMER_TOKENIZER_DIR)
    text = "What color is the dog?"
    assert loaded.qformer_tokenizer(text)["input_ids"] == model.qformer_tokenizer(text)["input_ids"]
    assert torch.equal(loaded.qformer.query_tokens, model.qformer.query_tokens)
    assert not loaded.training


def test_gradient_checkpointing_trains_the_qformer():
    from mmit.families import get_family
    from mmit.families.instructblip.model import build_instructblip
    from mmit.training.params import apply_trainable

    cfg = _run_cfg()
    cfg.train.stage = "align"
    model, tok = build_instructblip(cfg.model)
    apply_trainable(model, get_family("instructblip").trainable_modules(cfg))
    model.gradient_checkpointing_enable()
    model.train()
    q = model.qformer_tokenizer(["What is it?"], return_tensors="pt")
    ids = torch.tensor([[model.image_token_id] * 4 + [20, 21, 22]])
    loss = model(ids, pixel_values=torch.randn(1, 3, 32, 32), qformer_input_ids=q["input_ids"],
                 labels=ids.masked_fill(ids == model.image_token_id, -100)).loss
    loss.backward()
    assert model.qformer.query_tokens.grad is not None and model.qformer.query_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters())


def test_family_build_is_pure_and_prepare_for_training_applies_the_qformer_init(tmp_path):
    from transformers import BertModel

    from mmit.families import get_family
    from mmit.models.tiny_seq2seq import resolve_bert_path
    from mmit.training.params import apply_trainable

    cfg = _run_cfg(hidden_size=64, intermediate_size=128, init_from="tiny-bert")
    cfg.train.stage = "align"
    fam = get_family("instructblip")
    model, _ = fam.build(cfg)  # what checkpoint loading does: no init source is read
    bert = BertModel.from_pretrained(resolve_bert_path("tiny-bert"), add_pooling_layer=False)
    emb = lambda m: m.qformer.qformer.embeddings.word_embeddings.weight[:600]  # noqa: E731
    assert not torch.equal(emb(model), bert.embeddings.word_embeddings.weight)
    fam.prepare_for_training(model, cfg)
    assert torch.equal(emb(model), bert.embeddings.word_embeddings.weight)
    cfg.model.init_from = "runs/earlier"  # weights come from an earlier run: the init source is not applied
    model2, _ = fam.build(cfg)
    before = emb(model2).clone()
    fam.prepare_for_training(model2, cfg)
    assert torch.equal(emb(model2), before)

    # what trains per stage; the trainer applies it with apply_trainable
    trains = fam.trainable_modules(cfg)
    assert trains == {"vision_tower": False, "qformer": True, "llm": False}
    assert apply_trainable(model2, trains) == trains
    for name, on in trains.items():
        assert all(p.requires_grad == on for p in getattr(model2, name).parameters()), name
    cfg.train.stage = "finetune"
    assert fam.trainable_modules(cfg) == {"vision_tower": False, "qformer": True, "llm": True}
    cfg.model.vision_tower.frozen = False
    assert fam.trainable_modules(cfg) == {"vision_tower": True, "qformer": True, "llm": True}
    cfg.model.vision_tower.frozen = True
    cfg.train.stage = "full"
    assert fam.trainable_modules(cfg) == {"vision_tower": True, "qformer": True, "llm": True}
    groups = fam.param_groups(model2, cfg)
    assert set(groups) == {"qformer", "model"} and groups["model"][0] == []  # align: only Q-Former params train
    assert {n for n, _ in groups["qformer"][0]} == {n for n, p in model2.named_parameters() if p.requires_grad}
    # an unknown stage is refused when the config is read (there is no apply step to refuse it later)
    bad = tmp_path / "bad.yaml"
    tiny = (ROOT / "configs" / "instructblip" / "tiny.yaml").read_text()
    bad.write_text(tiny.replace("stage: align", "stage: pretrain"))
    with pytest.raises(ValueError, match="align"):
        load_config(str(bad))
