"""DataLoader transport of the training stream: zero-copy batch assembly from a chunk buffer,
shared-memory chunk buffers, a stream that ends at ``end_epoch``, workers that stop mid-chunk."""

from __future__ import annotations

import types

import pytest
import torch

from mmit.families.llava.processor import cat_adjacent


def test_cat_adjacent_views_back_to_back_pieces_and_copies_otherwise():
    flat = torch.arange(4 * 2 * 3, dtype=torch.float32)
    pieces = [flat[0:6].view(1, 2, 3), flat[6:18].view(2, 2, 3), flat[18:24].view(1, 2, 3)]
    got = cat_adjacent(pieces)
    assert torch.equal(got, torch.cat(pieces)) and got.shape == (4, 2, 3) and got.is_contiguous()
    assert got.data_ptr() == flat.data_ptr()  # a view: no copy
    for case in ([pieces[0], pieces[2]],  # a gap
                 [pieces[1], pieces[0]],  # out of order
                 [pieces[0], torch.ones(1, 2, 3)],  # another storage
                 [flat[0:12].view(2, 3, 2).transpose(1, 2)]):  # not contiguous
        out = cat_adjacent(case)
        assert torch.equal(out, torch.cat(case)) and out.data_ptr() != flat.data_ptr()
    with pytest.raises(RuntimeError):  # as torch.cat: adjacent, but another trailing shape
        cat_adjacent([pieces[0], flat[6:12].view(1, 3, 2)])
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        cat_adjacent([])


def test_large_chunk_buffers_are_allocated_in_shared_memory(monkeypatch):
    import mmit.training.data as data
    import mmit.training.transport as transport

    monkeypatch.setattr(transport, "PIPE_BYTES", 16)
    items = [{"pixel_values": torch.rand(1, 3, 8, 8), "input_ids": torch.arange(2)},
             {"pixel_values": torch.rand(2, 3, 8, 8), "input_ids": torch.arange(3)}]
    packed, buffers = data.pack_tensors(items)
    assert buffers[torch.float32].is_shared() and buffers[torch.long].is_shared()
    out = data.unpack_tensors(packed, buffers)
    values = cat_adjacent([it["pixel_values"] for it in out])
    assert torch.equal(values, torch.cat([it["pixel_values"] for it in items]))
    assert values.data_ptr() == buffers[torch.float32].data_ptr()


@pytest.mark.parametrize("workers", [0, 2])
def test_end_epoch_ends_the_stream_with_the_same_batches(tmp_path, workers):
    from conftest import tiny_run_config
    from mmit.families import get_family
    from mmit.training.data import SampleStream, batches

    cfg = tiny_run_config(tmp_path)
    fam = get_family("llava")
    model, tok = fam.build(cfg)
    pre = fam.processor(cfg, model, tok)
    endless = batches(SampleStream(cfg.data, 0), pre, 4, start_pos=3)
    want = []
    for b, e, p in endless:
        if e:
            break
        want.append((b, e, p))
    got = list(batches(SampleStream(cfg.data, 0), pre, 4, start_pos=3, num_workers=workers, end_epoch=1))
    assert len(got) == len(want) > 1
    for (ba, ea, pa), (bb, eb, pb) in zip(got, want):
        assert (ba.ids, ea, pa) == (bb.ids, eb, pb) and torch.equal(ba.input_ids, bb.input_ids)
        ia, ib = ba.values("image"), bb.values("image")
        assert (ia is None and ib is None) or torch.equal(ia, ib)
    assert list(batches(SampleStream(cfg.data, 0), pre, 4, start_epoch=1, end_epoch=1)) == []


def test_a_worker_drops_its_chunk_once_stop_is_set(monkeypatch, tmp_path):
    import multiprocessing as mp

    import mmit.training.data as data
    import mmit.training.transport as transport
    from conftest import tiny_run_config

    cfg = tiny_run_config(tmp_path)
    calls = []

    class Pre:
        def try_call(self, sample, skip):
            calls.append(sample.id)
            if len(calls) == 2:
                ds.stop.set()
            return {"id": sample.id}

    monkeypatch.setattr(data, "get_worker_info", lambda: types.SimpleNamespace(id=0, num_workers=1))
    ds = data._Preprocessed(data.SampleStream(cfg.data, 0), Pre(), 0, 0, chunk=8)
    ds.stop = mp.Event()
    assert list(ds) == [] and len(calls) == 2  # the chunk of 8 was dropped after its second sample


@pytest.mark.parametrize("opts", [dict(group_by_modality_length=True, max_tokens_per_batch=600),
                                  dict(packing=True, group_by_modality_length=True),
                                  dict(group_by_modality_length=True, batches_per_message=3)])
def test_grouped_and_packed_batches_are_the_same_with_chunked_workers(opts):
    """:mod:`mmit.training.batching` sends a chunk per message from workers (one batch's worth, or
    ``data.batches_per_message``): same batches, positions and skip counts as in the main process,
    across an epoch boundary and from a resume position."""
    from test_batching import _Pre, _samples, _Stream

    from mmit.config.schema import DataConfig
    from mmit.training.batching import build_batches

    samples = _samples(120, seed=4)
    runs = []
    for workers in (0, 2):
        stream = _Stream(samples, DataConfig(**opts))
        it = build_batches(stream, _Pre(), 8, 0, 5, num_workers=workers)
        out = [next(it) for _ in range(30)]
        runs.append(([(_ids(b), e, p) for b, e, p in out], stream.stats.as_dict()))
    assert runs[0] == runs[1]
    assert {e for _, e, _ in runs[0][0]} == {0, 1} and runs[0][1].get("too-long", 0) > 0


def _ids(batch):
    return [[it["id"] for it in (x if isinstance(x, list) else [x])] for x in batch]


def test_long_tensor_equals_torch_tensor():
    from mmit.families.llava.processor import long_tensor

    for values in ([], [0], [-100, -200, 5, 2**40, -(2**62)], list(range(700))):
        got = long_tensor(values)
        assert got.dtype == torch.long and torch.equal(got, torch.tensor(values, dtype=torch.long))
    with pytest.raises(OverflowError):
        long_tensor([2**63])

