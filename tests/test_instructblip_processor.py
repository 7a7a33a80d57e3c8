"""InstructBLIP processor: the LLM input layout, truncation, video frames, prompt batches, skips."""

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES
from mmit.config.schema import RunConfig
from mmit.constants import IGNORE_INDEX
from mmit.data.sample import Media, Sample, Turn
from mmit.data.stats import SkipCounter
from ib_common import _image, _model_cfg, _processor, build_llama_model


@pytest.fixture(scope="module")
def llama_model():
    return build_llama_model()


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
    # LAVIS: tokenize answer + eos with BOS to max_output_txt_len, drop BOS: a long answer has no eos
    assert [t for t in labels if t != IGNORE_INDEX] == a_ids[:3]
    short = pre(_sample(long_q, "red"))["labels"].tolist()
    assert [t for t in short if t != IGNORE_INDEX] == tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    qf = model.qformer_tokenizer(long_q)["input_ids"]
    assert item["qformer_input_ids"].tolist() == qf[:1] + qf[-4:]  # [CLS] + the end (with [SEP]), LAVIS left side


def test_an_instruction_over_128_tokens_keeps_its_question_in_both_tokenizers(llama_model):
    model, tok = llama_model
    pre = _processor(model, tok)  # InstructBLIP's 128 instruction tokens
    history = " ".join(f"turn {i} said nothing much." for i in range(60))
    item = pre(_sample(history + " What color is the dog?", "Brown."))
    q = model.qformer_tokenizer.decode(item["qformer_input_ids"].tolist(), skip_special_tokens=True)
    assert len(item["qformer_input_ids"]) == 128 and q.endswith("what color is the dog?")
    instr = [t for t, l in zip(item["input_ids"].tolist(), item["labels"].tolist())
             if l == IGNORE_INDEX and t != pre.image_token_id]
    assert len(instr) == 128 and tok.decode(instr).endswith("What color is the dog?")


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


def test_mp4_frames_reach_the_batch_and_a_broken_mp4_is_a_counted_skip(llama_model, tmp_path):
    """mp4 decodes with PyAV (a dependency now): num_frames frames per video; a truncated file is a
    counted ``undecodable-video`` skip, not a crash."""
    import av

    model, tok = llama_model
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(12):
            frame = av.VideoFrame.from_image(Image.new("RGB", (32, 32), (20 * k, 0, 0)))
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    pre = _processor(model, tok, num_frames=3)
    batch = pre.collate([pre(_sample(media=[Media("video", path=str(path))]))])
    assert tuple(batch.media["video"].values.shape[:2]) == (1, 3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(path.read_bytes()[:200])
    stats = SkipCounter()
    assert pre.try_call(_sample(media=[Media("video", path=str(broken))]), stats) is None
    assert stats.as_dict() == {"undecodable-video": 1}


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
    assert stats.as_dict() == {"empty-answer": 1}  # Sample.validate refuses a whitespace answer
    # a multi-turn sample: earlier turns (placeholders removed) form the instruction, the last answer is learned
    multi = Sample(id="m", media=_sample().media, turns=[
        Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A dog."), Turn("user", "What colour?"),
        Turn("assistant", "Brown.")])
    item = pre(multi)
    assert item["qformer_input_ids"].tolist() == model.qformer_tokenizer("What is it?\nA dog.\nWhat colour?")["input_ids"]
    learned = [t for t in item["labels"].tolist() if t != IGNORE_INDEX]
    assert learned == tok("Brown.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


# -- configs ------------------------------------------------------------------------------------
