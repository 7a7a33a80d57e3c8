"""``data_wait``: the share of training time spent waiting for the input pipeline (issue 17).

The trainer times ``next()`` on its batch iterator (:class:`mmit.training.data.WaitClock`) and writes
the share of each logged interval into ``metrics.jsonl``, the progress bar and ``summary.json``.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import tiny_run_config
from mmit.training.data import WaitClock, wait_fraction


def _slow(items, seconds):
    for x in items:
        time.sleep(seconds)
        yield x


def test_wait_clock_counts_time_blocked_in_next_and_windows_reset():
    clock = WaitClock(_slow(range(3), 0.05))
    assert next(clock) == 0
    first = clock.take()
    assert first >= 0.045
    assert clock.take() == 0.0  # a new window starts at each take
    time.sleep(0.1)  # time outside next() is not waiting
    assert list(clock) == [1, 2]
    second = clock.take()
    assert 0.09 <= second < 0.19
    assert clock.total == pytest.approx(first + second)


def test_wait_clock_counts_the_wait_before_an_error():
    def failing():
        time.sleep(0.05)
        raise RuntimeError("epoch 0 produced no usable sample")
        yield  # pragma: no cover

    clock = WaitClock(failing())
    with pytest.raises(RuntimeError, match="no usable sample"):
        next(clock)
    assert clock.total >= 0.045


def test_wait_fraction_is_clamped_to_0_1():
    assert wait_fraction(0.5, 2.0) == 0.25
    assert wait_fraction(3.0, 2.0) == 1.0
    assert wait_fraction(1.0, 0.0) == 0.0
    assert wait_fraction(-1.0, 1.0) == 0.0


def _run(tmp_path, name):
    from mmit.training.metrics import read_metrics
    from mmit.training.trainer import train

    cfg = tiny_run_config(tmp_path / name, max_steps=3, logging_steps=1)
    run = train(cfg)
    waits = [r["data_wait"] for r in read_metrics(run / "metrics.jsonl")]
    return waits, json.loads((run / "summary.json").read_text())


def test_data_wait_is_logged_and_rises_when_decoding_is_slow(tmp_path, monkeypatch):
    """The same run twice in the main process (``num_workers: 0``): with images decoded once and then
    served from memory at 48 px (next to nothing left to do per sample), and with the real decoder made
    slow (0.5 s per image). The slow one must show a much larger data_wait, in every record and in
    the summary."""
    import mmit.data.processor as processor

    real, decoded = processor.decode_image, {}

    def cached_decode(data, *args, **kwargs):
        if data not in decoded:
            decoded[data] = real(data, *args, **kwargs).resize((48, 48))
        return decoded[data].copy()

    def slow_decode(*args, **kwargs):
        time.sleep(0.5)  # sleeping, not computing: the same on a loaded machine
        return real(*args, **kwargs)

    monkeypatch.setattr(processor, "decode_image", cached_decode)
    _run(tmp_path, "warm")  # fills the cache
    fast, fast_summary = _run(tmp_path, "fast")
    monkeypatch.setattr(processor, "decode_image", slow_decode)
    slow, slow_summary = _run(tmp_path, "slow")
    for waits, summary in ((fast, fast_summary), (slow, slow_summary)):
        assert len(waits) == 3 and all(0.0 <= w <= 1.0 for w in waits)
        assert 0.0 <= summary["data_wait"] <= 1.0
        assert summary["data_wait_max"] == pytest.approx(max(waits))
    # 4 samples per batch, most with an image: about 2 s of waiting per step against a step of ~0.1 s
    # (0.5 s or more on a machine busy with other work)
    assert slow_summary["data_wait"] > 0.6
    assert slow_summary["data_wait"] > fast_summary["data_wait"] + 0.25
    assert min(slow) > sum(fast) / len(fast)
