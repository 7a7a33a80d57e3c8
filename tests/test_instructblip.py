"""InstructBLIP family: Q-Former connector, EVA tower, the LLM input layout, video frames, configs."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES, ROOT
from mmit.config.components import LLMConfig, QFormerConfig, VisionTowerConfig
from mmit.config.schema import RunConfig, load_config
from mmit.constants import IGNORE_INDEX
from mmit.data.sample import Media, Sample, Turn
from mmit.data.stats import SkipCounter

TINY_Q = dict(num_query_tokens=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
              vocab_size=600, max_position_embeddings=128, cross_attention_frequency=2)


def _model_cfg(llm="tiny-llama", tower="tiny-eva-vit", **q):
    from mmit.families.instructblip.config import InstructBlipConfig

    return InstructBlipConfig(
        vision_tower=VisionTowerConfig(name=tower, select_layer=-1, select_feature="cls_patch",
                                       image_aspect_ratio="crop"),
        qformer=QFormerConfig(**{**TINY_Q, "tokenizer": "tiny-bert", **q}),
        llm=LLMConfig(name_or_path=llm))


def _run_cfg(**kw):
    cfg = RunConfig.for_family("instructblip")
    cfg.model = _model_cfg(**kw)
    return cfg


def _processor(model, tok, **q):
    """The family's processor for ``model``; ``q`` overrides Q-Former settings it reads (max lengths, frames)."""
    import copy

    from mmit.families import get_family

    pre = get_family("instructblip").processor(RunConfig.for_family("instructblip"), model, tok)
    if q:
        from mmit.families.instructblip.processor import InstructBlipProcessor

        qcfg = copy.deepcopy(model.qformer.cfg)
        for k, v in q.items():
            setattr(qcfg, k, v)
        pre = InstructBlipProcessor(tok, model.qformer_tokenizer, model.vision_tower.image_processor, qcfg,
                                    model.image_token_id, model.is_encoder_decoder)
    return pre


@pytest.fixture(scope="module")
def llama_model():
    from mmit.families.instructblip.model import build_instructblip

    torch.manual_seed(0)
    model, tok = build_instructblip(_model_cfg())
    return model.eval(), tok


def _image(name="dog_running.jpg"):
    return Image.open(DEMO_IMAGES / name).convert("RGB")


# -- Q-Former connector -------------------------------------------------------------------------
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


# -- the InstructBLIP input layout ----------------------------------------------------------------
def _sample(question="What color is the dog?", answer="The dog is brown.", media=None):
    media = media if media is not None else [Media("image", path=str(DEMO_IMAGES / "dog_running.jpg"))]
    ph = "".join(f"<{m.kind}>\n" for m in media)
    return Sample(id="s1", turns=[Turn("user", ph + question), Turn("assistant", answer)], media=media)


def test_family_processor_reads_the_model(llama_model):
    from mmit.families import get_family
    from mmit.families.instructblip.processor import InstructBlipProcessor

    model, tok = llama_model
    cfg = RunConfig.for_family("instructblip")
    cfg.data.overflow = "error"
    pre = get_family("instructblip").processor(cfg, model, tok)
    assert isinstance(pre, InstructBlipProcessor)
    assert (pre.num_query_tokens, pre.image_token_id, pre.is_encoder_decoder) == (4, model.image_token_id, False)
    assert pre.qformer_tokenizer is model.qformer_tokenizer and pre.overflow == "error"
    assert pre.qformer_pad_id == model.qformer_tokenizer.pad_token_id
    import pickle

    assert pickle.loads(pickle.dumps(pre))(_sample())["input_ids"].tolist() == pre(_sample())["input_ids"].tolist()
    with pytest.raises(ValueError, match="Q-Former tokenizer"):
        InstructBlipProcessor(tok, None, model.vision_tower.image_processor, model.qformer.cfg, model.image_token_id,
                              False)


def test_decoder_only_layout_labels_only_on_answer_and_eos(llama_model):
    model, tok = llama_model
    pre = _processor(model, tok)
    item = pre(_sample())
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    instr = tok("What color is the dog?")["input_ids"]
    ans = tok("The dog is brown.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == [model.image_token_id] * 4 + instr + ans
    assert labels == [IGNORE_INDEX] * (4 + len(instr)) + ans
    assert [(k, tuple(v.shape)) for k, v in item["media"]] == [("image", (1, 3, 32, 32))]
    assert torch.equal(item["media"][0][1], model.vision_tower.image_processor([_image()]))
    assert item["qformer_input_ids"].tolist() == model.qformer_tokenizer("What color is the dog?")["input_ids"]


def test_instruction_left_truncated_answer_right_truncated(llama_model):
    model, tok = llama_model
    pre = _processor(model, tok, max_text_length=5, max_output_length=4)
    long_q = "one two three four five six seven eight nine ten"
    long_a = "red green blue yellow orange purple"
    item = pre(_sample(long_q, long_a))
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    q_ids = tok(long_q)["input_ids"]
    a_ids = tok(long_a, add_special_tokens=False)["input_ids"]
    assert ids[4:9] == q_ids[-5:]  # the end of the instruction is kept
    assert [t for t in labels if t != IGNORE_INDEX] == a_ids[:3] + [tok.eos_token_id]  # eos kept
    assert len(item["qformer_input_ids"]) == 5


def test_seq2seq_layout_and_loss():
    from mmit.families import get_family
    from mmit.families.instructblip.model import build_instructblip

    model, tok = build_instructblip(_model_cfg(llm="tiny-flan-t5"))
    assert model.is_encoder_decoder
    pre = _processor(model, tok)
    item = pre(_sample())
    assert item["input_ids"].tolist() == [model.image_token_id] * 4 + tok("What color is the dog?")["input_ids"]
    assert item["labels"].tolist() == tok("The dog is brown.")["input_ids"]  # answer + </s>
    assert item["labels"][-1] == tok.eos_token_id
    batch = pre.collate([item, pre(_sample("Is it a cat?", "No."))])
    assert batch.labels.shape[0] == 2 and (batch.labels[1] == IGNORE_INDEX).any()
    assert batch.labels.shape != batch.input_ids.shape  # decoder labels, not the encoder layout
    fam = get_family("instructblip")
    loss = fam.loss(model, batch)
    assert torch.isfinite(loss) and loss.item() > 0
    # count: encoder tokens plus supervised decoder tokens
    assert fam.count(batch) == int(batch.attention_mask.sum()) + int((batch.labels != IGNORE_INDEX).sum())


def test_video_frames_each_through_the_qformer_and_concatenated(llama_model):
    model, tok = llama_model
    frames = torch.randn(3, 3, 32, 32)  # one video: F=3 frames
    q = model.qformer_tokenizer(["What happens?"] * 3, return_tensors="pt")["input_ids"]
    ids = torch.tensor([[model.image_token_id] * 12 + [30, 31]])
    with torch.no_grad():
        emb = model.embed(ids, frames, q)
        per_frame = [model.encode_images(frames[i:i + 1], q[i:i + 1]) for i in range(3)]
    assert torch.allclose(emb[0, :12], torch.cat(per_frame, 1)[0], atol=1e-6)
    with pytest.raises(ValueError, match="query tokens"):
        model.embed(ids[:, 4:], frames, q)


def _gif(colors, size=(40, 30)):
    import io

    frames = [Image.new("RGB", size, c) for c in colors]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def test_video_media_becomes_frames_each_with_the_instruction(llama_model):
    from mmit.families import get_family

    model, tok = llama_model
    pre = _processor(model, tok, num_frames=3)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    video = Media("video", path="clip.gif", data=_gif(colors))
    image = Media("image", path=str(DEMO_IMAGES / "dog_running.jpg"))
    item = pre(_sample("What happens?", "It changes colour.", media=[image, video]))
    assert [(k, tuple(v.shape)) for k, v in item["media"]] == [("image", (1, 3, 32, 32)), ("video", (3, 3, 32, 32))]
    assert item["input_ids"].tolist()[:16] == [model.image_token_id] * 16  # 1 image + 3 frames, M = 4
    assert item["input_ids"].tolist()[16] != model.image_token_id
    # frames 0, 2, 4 of five (first and last kept): red, blue, cyan
    frames = item["media"][1][1]
    red, blue, cyan = (model.vision_tower.image_processor([Image.new("RGB", (40, 30), c)])[0]
                       for c in (colors[0], colors[2], colors[4]))
    assert torch.allclose(frames[0], red, atol=1e-5)
    assert torch.allclose(frames[1], blue, atol=1e-5)
    assert torch.allclose(frames[2], cyan, atol=1e-5)

    other = pre(_sample("Is it a dog?", "Yes."))
    batch = pre.collate([item, other])
    assert batch.describe()["media.image"] == (2, 3, 32, 32) and batch.describe()["media.video"] == (1, 3, 3, 32, 32)
    assert batch.media["image"].sample_index.tolist() == [0, 1] and batch.media["image"].position.tolist() == [0, 0]
    assert batch.media["video"].sample_index.tolist() == [0] and batch.media["video"].position.tolist() == [4]
    assert batch.count("image") == [1, 1] and batch.count("video") == [1, 0]
    # the Q-Former instruction travels once per sample ...
    q = batch.extra["qformer_input_ids"]
    assert q.shape[0] == 2 and batch.extra["qformer_attention_mask"].shape == q.shape
    assert q[0, :len(item["qformer_input_ids"])].tolist() == item["qformer_input_ids"].tolist()
    # ... and the model repeats it for every image and frame, in text order
    pixels, q_ids, q_mask = model.visual_inputs(batch)
    assert pixels.shape == (5, 3, 32, 32)
    assert torch.equal(pixels[0], item["media"][0][1][0]) and torch.equal(pixels[1:4], frames)
    assert torch.equal(pixels[4], other["media"][0][1][0])
    assert torch.equal(q_ids, q[[0, 0, 0, 0, 1]])
    assert torch.equal(q_mask, batch.extra["qformer_attention_mask"][[0, 0, 0, 0, 1]])
    with torch.no_grad():
        assert torch.isfinite(get_family("instructblip").loss(model, batch))

    # media order is text order: a video before an image puts its frames first
    swapped = pre.collate([pre(_sample("What happens?", "It changes colour.", media=[video, image]))])
    assert swapped.media["video"].position.tolist() == [0] and swapped.media["image"].position.tolist() == [12]
    px, _, _ = model.visual_inputs(swapped)
    assert torch.equal(px[:3], frames) and torch.equal(px[3], item["media"][0][1][0])


def test_prompt_batch_is_left_padded_with_the_instruction_for_the_qformer(llama_model):
    """Prompts (``mmit generate``, eval): the bare instruction, no template, no labels; left padding
    moves each image's span, and the Q-Former reads the instruction the processor tokenized."""
    model, tok = llama_model
    pre = _processor(model, tok)
    a = pre.prompt([Turn("user", "<image>\nWhat color is the dog?")], [_image()])
    b = pre.prompt([Turn("user", "<image>\nIs this a statue? Answer yes or no.")], [_image("statue_of_liberty.jpg")])
    assert "labels" not in a
    assert a["input_ids"].tolist() == [model.image_token_id] * 4 + tok("What color is the dog?")["input_ids"]
    assert a["qformer_input_ids"].tolist() == model.qformer_tokenizer("What color is the dog?")["input_ids"]
    batch = pre.collate_prompts([a, b])
    assert batch.labels is None
    pad = batch.input_ids.shape[1] - len(a["input_ids"])
    assert pad > 0 and batch.attention_mask[0, :pad].sum() == 0 and batch.attention_mask[0, pad:].all()
    assert batch.input_ids[0, pad:].tolist() == a["input_ids"].tolist()
    assert batch.media["image"].position.tolist() == [pad, 0]
    pixels, q_ids, _ = model.visual_inputs(batch)
    assert pixels.shape[0] == 2 and torch.equal(q_ids, batch.extra["qformer_input_ids"])
    # the padded batch gives each prompt its own next-token logits
    with torch.no_grad():
        got = model.prefill(batch).logits
        for row, it in enumerate((a, b)):
            alone = model.prefill(pre.collate_prompts([it])).logits[0]
            assert torch.allclose(got[row], alone, atol=1e-4), row


def test_mp4_without_pyav_is_a_counted_skip(llama_model, tmp_path):
    from conftest import SHARED_SAMPLES

    try:
        import av  # noqa: F401
        pytest.skip("PyAV is installed: mp4 decodes")
    except ImportError:
        pass
    model, tok = llama_model
    video = SHARED_SAMPLES / "videochat" / "example" / "yoga.mp4"
    if not video.is_file():
        video = tmp_path / "clip.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    stats = SkipCounter()
    pre = _processor(model, tok)
    assert pre.try_call(_sample(media=[Media("video", path=str(video))]), stats) is None
    assert stats.as_dict() == {"no-video-decoder": 1}


def test_sample_without_final_answer_is_rejected(llama_model):
    from mmit.data.sample import SampleError

    model, tok = llama_model
    s = _sample()
    s.turns = s.turns[:1]
    pre = _processor(model, tok)
    with pytest.raises(SampleError, match="s1") as e:
        pre(s)
    assert e.value.reason == "no-answer"
    stats = SkipCounter()
    assert pre.try_call(_sample(answer="  "), stats) is None
    assert stats.as_dict() == {"no-supervised-tokens": 1}
    # a multi-turn sample: earlier turns (placeholders removed) form the instruction, the last answer is learned
    multi = Sample(id="m", media=_sample().media, turns=[
        Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A dog."), Turn("user", "What colour?"),
        Turn("assistant", "Brown.")])
    item = pre(multi)
    assert item["qformer_input_ids"].tolist() == model.qformer_tokenizer("What is it?\nA dog.\nWhat colour?")["input_ids"]
    learned = [t for t in item["labels"].tolist() if t != IGNORE_INDEX]
    assert learned == tok("Brown.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


# -- configs ------------------------------------------------------------------------------------
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
