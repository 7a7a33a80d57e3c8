"""Batching for throughput (:mod:`mmit.training.batching`): modality-length grouping, token budgets,
packing (the tiny LLaVA's logits of a packed batch equal those of its samples run one by one) and a
short training run with grouping + packing."""

from __future__ import annotations

import random
import statistics
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_run_config
from mmit.config.schema import DataConfig
from mmit.data.sample import Media, Sample, Turn
from mmit.data.stats import SkipCounter
from mmit.training.batching import BatchBuilder, build_batches, first_fit, grouped_order, pack_sequences


def _samples(n: int, seed: int = 0, text_only: float = 0.3):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mm = rng.random() >= text_only
        words = rng.choice([rng.randint(3, 20), rng.randint(40, 200)])
        media = [Media("image", path=f"{i}.jpg")] if mm else []
        text = ("<image>\n" if mm else "") + "q " * 3
        out.append(Sample(str(i), [Turn("user", text), Turn("assistant", "w " * words)], media))
    return out


class _Stream:
    """The part of :class:`mmit.training.data.SampleStream` that :func:`build_batches` reads."""

    def __init__(self, samples, cfg, seed=0):
        self.samples, self.cfg, self.seed, self.stats = samples, cfg, seed, SkipCounter()

    def epoch(self, e):
        order = list(range(len(self.samples)))
        random.Random(self.seed * 1_000_003 + e).shuffle(order)
        return (self.samples[i] for i in order)


class _Pre:
    """A processor whose item is the sample's estimated length in tokens; every 7th id is skipped;
    ``collate`` returns the items, ``collate_packed`` the rows."""

    num_image_tokens, max_length, overflow, family_name = 16, 160, "skip", "fake"

    def try_call(self, sample, stats):
        if int(sample.id) % 7 == 3:
            stats.add("too-long", sample.id, "skipped on purpose")
            return None
        n = min(self.max_length, 3 + len(sample.turns[1].content.split()) + 16 * len(sample.media))
        return {"id": sample.id, "input_ids": torch.zeros(n, dtype=torch.long), "mm": bool(sample.media)}

    def collate(self, items):
        return list(items)

    def collate_packed(self, rows):
        return [list(r) for r in rows]


def _run(stream, n_batches, bs, start=(0, 0)):
    it = build_batches(stream, _Pre(), bs, start[0], start[1])
    return [next(it) for _ in range(n_batches)]


def _items(batch):
    return [it for x in batch for it in (x if isinstance(x, list) else [x])]


def _epoch0(out):
    return [b for b, e, _ in out if e == 0]


def test_grouping_keeps_modalities_apart_covers_once_and_is_seeded():
    samples = _samples(1000)
    bs = 8
    order = list(grouped_order(samples, bs, seed=1, epoch=0, media_tokens=16, window=160))
    assert sorted(int(s.id) for _, s in order) == list(range(1000))  # every sample exactly once
    again = [(g, s.id) for g, s in grouped_order(samples, bs, seed=1, epoch=0, media_tokens=16, window=160)]
    assert again == [(g, s.id) for g, s in order]  # a function of (seed, epoch)
    other = [s.id for _, s in grouped_order(samples, bs, seed=1, epoch=1, media_tokens=16, window=160)]
    assert other != [s.id for _, s in order]
    groups = {}
    for g, s in order:
        groups.setdefault(g, []).append(s)
    mixed = [g for g, ss in groups.items() if len({bool(s.media) for s in ss}) > 1]
    assert not mixed  # no group (hence no batch) mixes modalities
    sizes = [len(ss) for ss in groups.values()]
    assert sum(1 for n in sizes if n != bs) <= 2  # only the last group of each modality is partial

    def spread(batches):
        return statistics.mean(max(x) - min(x) for x in batches)

    length = lambda s: len(s.turns[1].content.split())  # noqa: E731
    grouped = spread([[length(s) for s in ss] for ss in groups.values()])
    rand = spread([[length(s) for s in samples[i:i + bs]] for i in range(0, 1000, bs)])
    assert grouped < 0.2 * rand, (grouped, rand)


def test_grouped_batches_modality_budget_coverage_and_exact_resume():
    samples = _samples(300, seed=3)
    cfg = DataConfig(group_by_modality_length=True, max_tokens_per_batch=600)
    stream = _Stream(samples, cfg)
    out = _run(stream, 80, bs=16)
    first = _epoch0(out)
    seen = [it["id"] for b in first for it in b]
    usable = sorted(s.id for s in samples if int(s.id) % 7 != 3)
    assert sorted(seen) == usable and len(seen) == len(set(seen))  # each usable sample once per epoch
    for b in first:
        lens = [len(it["input_ids"]) for it in b]
        assert len(b) <= 16 and (len(b) == 1 or len(b) * max(lens) <= 600)
        assert len({it["mm"] for it in b}) == 1
    counted = _Stream(samples, cfg)
    _run(counted, len(first), bs=16)  # exactly epoch 0: every skip counted once
    assert counted.stats.as_dict() == {"too-long": sum(1 for s in samples if int(s.id) % 7 == 3)}
    for k in (0, 3, 10, len(first) - 1, len(first) + 2):  # resume after batch k, also into epoch 1
        _, e, p = out[k]
        rest = _run(_Stream(samples, cfg), 10, bs=16, start=(e, p))
        assert [[it["id"] for it in b] for b, _, _ in rest] == [[it["id"] for it in b] for b, _, _ in out[k + 1:k + 11]]
        assert [(e2, p2) for _, e2, p2 in rest] == [(e2, p2) for _, e2, p2 in out[k + 1:k + 11]]


@pytest.mark.parametrize("budget", [None, 480])
def test_packing_budget_and_exact_resume(budget):
    samples = _samples(200, seed=5)
    cfg = DataConfig(packing=True, max_tokens_per_batch=budget, group_by_modality_length=budget is None)
    out = _run(_Stream(samples, cfg), 40, bs=12)
    first = _epoch0(out)
    assert sorted(it["id"] for b in first for it in _items(b)) == sorted(s.id for s in samples if int(s.id) % 7 != 3)
    for rows in first:
        loads = [sum(len(it["input_ids"]) for it in r) for r in rows]
        assert max(loads) <= _Pre.max_length or len(rows) == 1
        assert sum(len(r) for r in rows) <= 12
        if budget and sum(len(r) for r in rows) > 1:
            assert len(rows) * max(loads) <= budget
    _, e, p = out[5]
    rest = _run(_Stream(samples, cfg), 8, bs=12, start=(e, p))
    ids = lambda bs: [[[it["id"] for it in r] for r in rows] for rows, _, _ in bs]  # noqa: E731
    assert ids(rest) == ids(out[6:14])


def test_builder_and_first_fit_units():
    assert first_fit([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    b = BatchBuilder(batch_size=10, max_tokens=100)
    for n in (30, 20):
        assert b.fits(n)
        b.add(n, n)
    assert b.fits(33) and not b.fits(34)  # 3 rows x 34 > 100
    ids, mask, labels, pos = pack_sequences([[(torch.tensor([1, 2, 3]), torch.tensor([-100, 5, 6])),
                                              (torch.tensor([4, 5]), torch.tensor([7, 8]))],
                                             [(torch.tensor([9]), torch.tensor([10]))]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [9, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert labels.tolist() == [[-100, 5, 6, -100, 8], [-100, -100, -100, -100, -100]]
    assert pos.tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    with pytest.raises(ValueError, match="cannot pack"):
        next(build_batches(_Stream([], DataConfig(packing=True)), SimpleNamespace(family_name="x", max_length=8), 4))


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from mmit.families import get_family
    from mmit.training.data import SampleStream

    cfg = tiny_run_config(tmp_path_factory.mktemp("pack"))
    fam = get_family("llava")
    torch.manual_seed(0)
    model, tok = fam.build(cfg)
    pre = fam.processor(cfg, model, tok)
    stream = SampleStream(cfg.data, 0)
    items = [it for it in (pre.try_call(s, stream.stats) for s in stream.epoch(0)) if it is not None]
    return model.eval(), pre, items


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_samples_run_one_by_one(tiny_llava, impl):
    model, pre, items = tiny_llava
    text_only = [it for it in items if it["pixel_values"] is None]
    multi = [it for it in items if it["pixel_values"] is not None and it["pixel_values"].shape[0] > 1]
    single = [it for it in items if it["pixel_values"] is not None and it["pixel_values"].shape[0] == 1]
    assert text_only and multi and single
    rows = [[single[0], text_only[0], multi[0]], [single[1], single[2]], [text_only[1]]]
    batch = pre.collate_packed(rows)
    assert batch.values("image").shape[0] == sum(it["pixel_values"].shape[0] for r in rows for it in r
                                                 if it["pixel_values"] is not None)
    model.llm.set_attn_implementation(impl)
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.values("image"),
                    position_ids=batch.extra["position_ids"])
        worst = 0.0
        for r, row in enumerate(rows):
            at = 0
            for it in row:
                one = pre.collate([it])
                ref = model(one.input_ids, one.attention_mask, None, one.values("image")).logits[0]
                n = len(it["input_ids"])
                worst = max(worst, float((out.logits[r, at:at + n] - ref).abs().max()))
                at += n
        padded = pre.collate([it for r in rows for it in r])
        ref_loss = model(padded.input_ids, padded.attention_mask, padded.labels, padded.values("image")).loss
        # guard: without the block-diagonal mask the later samples of a row see the earlier ones
        leak = model(batch.input_ids, batch.attention_mask, None, batch.values("image")).logits
    assert worst <= 1e-5, worst
    assert float(out.loss) == pytest.approx(float(ref_loss), abs=1e-5)
    n0 = len(rows[0][0]["input_ids"])
    assert float((leak[0, n0:] - out.logits[0, n0:]).abs().max()) > 1e-3


def test_short_training_run_with_grouping_and_packing_lowers_the_loss(tmp_path):
    from mmit.training.metrics import read_metrics
    from mmit.training.trainer import train

    cfg = tiny_run_config(tmp_path, stage="full", max_steps=24, lr=3e-3, warmup_ratio=0.1, batch_size=6)
    cfg.data.group_by_modality_length, cfg.data.packing, cfg.data.max_tokens_per_batch = True, True, 640
    run = train(cfg)
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert len(losses) == 24
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_trainer_resume_with_grouping_and_packing_is_exact(tmp_path):
    import json

    from safetensors.torch import load_file

    from mmit.training.checkpoint import latest_checkpoint
    from mmit.training.trainer import train

    def cfg_for(d):
        cfg = tiny_run_config(d, save_steps=2, max_steps=7, batch_size=6)
        cfg.data.group_by_modality_length, cfg.data.packing, cfg.data.max_tokens_per_batch = True, True, 480
        return cfg

    full = train(cfg_for(tmp_path / "a"))
    cfg = cfg_for(tmp_path / "b")
    train(cfg, stop_after_steps=5)
    state = json.loads((latest_checkpoint(cfg.train.output_dir) / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and state["position"] > 0
    cfg.train.resume = True
    resumed = train(cfg)
    a, b = (load_file(str(r / "final" / "model.safetensors")) for r in (full, resumed))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
