"""LlavaProcessor: image-token expansion, budgeting before truncation, skips, padding, the typed batch."""

import io

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from mmit.constants import IGNORE_INDEX
from mmit.families.llava.processor import LlavaProcessor
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.stats import SkipCounter
from mmit.models.llm import resolve_llm_path

N = 5  # tokens per image in these tests


def _png(color=(255, 0, 0)):
    b = io.BytesIO()
    Image.new("RGB", (7, 5), color).save(b, format="PNG")
    return b.getvalue()


def _transform(images):
    return torch.stack([torch.tensor(list(im.getpixel((0, 0))), dtype=torch.float32).view(3, 1, 1).expand(3, 2, 2)
                        for im in images])


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_llm_path("tiny-llama"))


def _pre(tok, max_length=512, overflow="skip", template="vicuna-v1"):
    return LlavaProcessor(tok, template, _transform, N, tok.convert_tokens_to_ids("<image>"), max_length, overflow)


def _sample(n_images=1, answer="The dog is brown.", sid="s"):
    ph = "<image>\n" * n_images
    return Sample(id=sid, turns=[Turn("user", ph + "What is it?"), Turn("assistant", answer)],
                  media=[Media("image", path=f"im{i}.png", data=_png((10 * i, 0, 0))) for i in range(n_images)])


def test_each_image_expands_to_n_masked_tokens(tok):
    pre = _pre(tok)
    img = tok.convert_tokens_to_ids("<image>")
    for k in (0, 1, 3):
        item = pre(_sample(k))
        ids, labels = item["input_ids"], item["labels"]
        assert int((ids == img).sum()) == k * N
        assert bool((labels[ids == img] == IGNORE_INDEX).all())
        assert (item["pixel_values"] is None) if k == 0 else item["pixel_values"].shape == (k, 3, 2, 2)
        learned = tok.decode(ids[labels != IGNORE_INDEX])
        assert learned.strip() == "The dog is brown.</s>"


def test_images_keep_their_order(tok):
    item = _pre(tok)(_sample(3))
    assert item["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 10.0, 20.0]


def test_truncation_cuts_text_after_the_images_only(tok):
    full = _pre(tok)(_sample(1, answer="one two three four five six seven eight nine ten"))
    T = full["input_ids"].shape[0]
    cut = _pre(tok, max_length=T - 3)(_sample(1, answer="one two three four five six seven eight nine ten"))
    assert cut["input_ids"].shape[0] == T - 3
    assert torch.equal(cut["input_ids"], full["input_ids"][:T - 3])


def test_a_cut_inside_an_image_span_is_refused(tok):
    item = _pre(tok)(_sample(2))
    img = tok.convert_tokens_to_ids("<image>")
    last_image_end = int((item["input_ids"] == img).nonzero().max()) + 1
    pre = _pre(tok, max_length=last_image_end - 2, overflow="error")  # would cut inside the second image
    with pytest.raises(SampleError, match="never cut") as e:
        pre(_sample(2, sid="two-images"))
    assert e.value.reason == "too-long-for-images" and "two-images" in str(e.value)
    stats = SkipCounter()
    assert _pre(tok, max_length=last_image_end - 2).try_call(_sample(2), stats) is None
    assert stats.as_dict() == {"too-long-for-images": 1}


def test_truncation_that_leaves_nothing_to_learn_is_a_counted_skip(tok):
    item = _pre(tok)(_sample(1))
    first_learned = int((item["labels"] != IGNORE_INDEX).nonzero().min())
    stats = SkipCounter()
    assert _pre(tok, max_length=first_learned).try_call(_sample(1), stats) is None
    assert stats.as_dict() == {"no-supervised-tokens": 1}


def test_undecodable_image_and_count_mismatch(tok):
    bad = _sample(1, sid="bad-img")
    bad.media[0].data = b"not an image at all"
    with pytest.raises(SampleError) as e:
        _pre(tok, overflow="error")(bad)
    assert e.value.reason == "undecodable-image" and "bad-img" in str(e.value)
    mism = _sample(1, sid="mism")
    mism.media.append(Media("image", data=_png()))
    with pytest.raises(SampleError) as e:
        _pre(tok)(mism)
    assert e.value.reason == "image-count-mismatch"


def test_collate_pads_right_and_mixes_text_only(tok):
    pre = _pre(tok)
    items = [pre(_sample(2, sid="a")), pre(_sample(0, sid="b")), pre(_sample(1, sid="c"))]
    b = pre.collate(items)
    T = max(int(i["input_ids"].shape[0]) for i in items)
    assert b.input_ids.shape == (3, T) and b.attention_mask.shape == (3, T)
    assert b.values("image").shape == (3, 3, 2, 2) and b.count("image") == [2, 0, 1] and b.ids == ["a", "b", "c"]
    for row, it in enumerate(items):
        n = int(it["input_ids"].shape[0])
        assert int(b.attention_mask[row].sum()) == n
        assert bool((b.labels[row, n:] == IGNORE_INDEX).all())
        assert bool((b.input_ids[row, n:] == tok.pad_token_id).all())
    # each image's position is the first token of its span, in sample then text order
    img = tok.convert_tokens_to_ids("<image>")
    m = b.media["image"]
    assert m.sample_index.tolist() == [0, 0, 2]
    for r, p in zip(m.sample_index.tolist(), m.position.tolist()):
        assert bool((b.input_ids[r, p:p + N] == img).all()) and (p == 0 or int(b.input_ids[r, p - 1]) != img or
                                                                  bool((b.input_ids[r, p - N:p] == img).all()))
    assert pre.collate([pre(_sample(0))]).values("image") is None


def test_prompt_batches_are_left_padded_with_positions_shifted(tok):
    from mmit.data.sample import Turn as T_

    pre = _pre(tok)
    im = Image.new("RGB", (7, 5), (30, 0, 0))
    long = pre.prompt([T_("user", "<image>\nWhat is in this picture, in many words?")], [im], "long")
    short = pre.prompt([T_("user", "<image>\nWhat?")], [im], "short")
    b = pre.collate_prompts([long, short])
    assert b.labels is None
    pad = b.input_ids.shape[1] - short["input_ids"].shape[0]
    assert bool((b.attention_mask[1, :pad] == 0).all()) and bool((b.attention_mask[1, pad:] == 1).all())
    img = tok.convert_tokens_to_ids("<image>")
    p_short = int(b.media["image"].position[1])
    assert p_short == pad + int((short["input_ids"] == img).nonzero().min())
    assert bool((b.input_ids[1, p_short:p_short + N] == img).all())


def test_preprocessor_pickles(tok):
    import pickle

    pre = pickle.loads(pickle.dumps(_pre(tok)))
    assert pre(_sample(1))["input_ids"].shape[0] > 0


def test_budget_boundary_is_the_end_of_the_last_image_span(tok):
    """max_length one short of the last image's end -> too-long-for-images; exactly at it -> the images fit
    (the cut falls on the span's end) but the answer is gone -> no-supervised-tokens."""
    img = tok.convert_tokens_to_ids("<image>")
    item = _pre(tok)(_sample(2))
    end = int((item["input_ids"] == img).nonzero().max()) + 1
    for max_length, reason in ((end - 1, "too-long-for-images"), (end, "no-supervised-tokens")):
        with pytest.raises(SampleError) as e:
            _pre(tok, max_length=max_length, overflow="error")(_sample(2, sid="edge"))
        assert e.value.reason == reason and "edge" in str(e.value)


def test_try_call_reraises_under_overflow_error_and_counts_with_a_duck_typed_stats(tok):
    with pytest.raises(SampleError, match="never cut"):
        _pre(tok, max_length=N, overflow="error").try_call(_sample(1, sid="big"), SkipCounter())

    class Stats:  # anything with .add(reason, sample_id=None, message=None)
        def __init__(self):
            self.calls = []

        def add(self, reason, sample_id=None, message=None):
            self.calls.append((reason, sample_id))

    stats = Stats()
    pre = _pre(tok, max_length=int(_pre(tok)(_sample(0))["input_ids"].shape[0]))  # the text-only sample fits exactly
    assert [pre.try_call(_sample(k, sid=f"s{k}"), stats) is None for k in (0, 4, 8)] == [False, True, True]
    assert stats.calls == [("too-long-for-images", "s4"), ("too-long-for-images", "s8")]


def test_media_path_is_read_when_data_is_absent(tok, tmp_path):
    p = tmp_path / "im.png"
    p.write_bytes(_png((30, 0, 0)))
    s = _sample(1)
    s.media[0] = Media("image", path=str(p))
    assert _pre(tok)(s)["pixel_values"][:, 0, 0, 0].tolist() == [30.0]


def test_collate_refuses_an_empty_batch(tok):
    with pytest.raises(ValueError, match="no items"):
        _pre(tok).collate([])
