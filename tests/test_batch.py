"""The typed batch and the one placeholder table: shapes checked, spans found, every media kind counted."""

from __future__ import annotations

import pytest
import torch

from mmit.constants import MEDIA_PLACEHOLDERS
from mmit.data.batch import Batch, MediaTensors, pad_rows, span_starts
from mmit.data.sample import Media, Sample, SampleError, Turn


def test_media_tensors_and_batch_refuse_inconsistent_shapes():
    with pytest.raises(ValueError, match="sample_index"):
        MediaTensors(torch.zeros(2, 3, 4, 4), torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="input_ids"):
        Batch(["a", "b"], torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        Batch(["a"], torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))


def test_batch_counts_media_per_sample_and_moves_every_tensor():
    m = MediaTensors(torch.zeros(3, 3, 2, 2), torch.tensor([0, 0, 2]), torch.tensor([1, 5, 0]))
    b = Batch(["a", "b", "c"], torch.zeros(3, 6, dtype=torch.long), torch.ones(3, 6, dtype=torch.long),
              media={"image": m}, extra={"q": torch.zeros(3, 2)})
    assert b.count("image") == [2, 0, 1] and b.count("video") == [0, 0, 0] and b.values("video") is None
    moved = b.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.media["image"].values.device.type == "meta"
    assert moved.extra["q"].device.type == "meta" and b.input_ids.device.type == "cpu"
    assert b.describe()["media.image"] == (3, 3, 2, 2)


def test_pad_rows_left_and_right():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    right, rm = pad_rows(rows, 0)
    left, lm = pad_rows(rows, 0, left=True)
    assert right.tolist() == [[1, 2, 3], [4, 0, 0]] and rm.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert left.tolist() == [[1, 2, 3], [0, 0, 4]] and lm.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="no items"):
        pad_rows([], 0)


def test_span_starts_splits_adjacent_spans_and_refuses_a_cut_span():
    ids = torch.tensor([[5, 9, 9, 9, 9, 6, 9, 9], [9, 9, 7, 7, 7, 7, 7, 7]])
    assert span_starts(ids, 9, 2) == [(0, 1), (0, 3), (0, 6), (1, 0)]
    with pytest.raises(ValueError, match="not a multiple"):
        span_starts(torch.tensor([[9, 9, 9]]), 9, 2)


@pytest.mark.parametrize("kind", ["image", "video", "audio", "pointcloud"])
def test_validate_checks_the_placeholder_count_of_every_kind(kind):
    ph = MEDIA_PLACEHOLDERS[kind]
    ok = Sample("s", [Turn("user", f"{ph}\nWhat is it?"), Turn("assistant", "A thing.")], [Media(kind, path="x")])
    ok.validate()
    twice = Sample("s", [Turn("user", f"{ph}{ph}\nWhat?"), Turn("assistant", "A.")], [Media(kind, path="x")])
    with pytest.raises(SampleError) as e:
        twice.validate()
    assert e.value.reason == f"{kind}-count-mismatch" and "'s'" in str(e.value)


def test_instructblip_instruction_drops_every_placeholder():
    from mmit.families.instructblip.processor import instruction_text

    turns = [Turn("user", "<video>\n<image>\nWhat happens? <audio>")]
    assert instruction_text(turns) == "What happens?"
