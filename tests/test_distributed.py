"""Training in several processes on the CPU (gloo): DDP through ``torchrun`` and ``accelerate launch``
with ``configs/accelerate/ddp.yaml``, FSDP2 with ``configs/accelerate/fsdp.yaml``; the data split, the
DeepSpeed configs, and the launch that starts one process where two were asked for.

Every multi-process run is compared with one process using gradient accumulation 2 on the same global
batch. Data order: the stream gives process ``r`` the blocks ``r, r + 2, ...`` of ``batch_size`` samples
(``mmit.training.split``), and one process with accumulation 2 takes blocks ``2k, 2k + 1`` for step ``k``,
so both see the same samples in the same micro-batches (shards: ``shuffle_buffer: 0`` and shards of
``batch_size`` samples). The lr is constant (no warmup) so a run stopped and resumed has the schedule of
an uninterrupted one; dropout is 0 in the tiny models.

Run as a script (``torchrun ... tests/test_distributed.py --stop-after N ARGS``) this file is the worker
that trains, stops after step N as a crash would, and resumes in the same processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "llava" / "tiny_demo.yaml"
BIN = Path(sys.executable).parent
DEMO_JSON, DEMO_IMAGES = ROOT / "demo_data" / "llava_demo.json", ROOT / "demo_data" / "images"
COMMON = ["--model.llm.name_or_path=tiny-llama", "--train.report_to=none", "--train.progress_bar=false",
          "--train.logging_steps=1", "--train.lr_scheduler=constant", "--train.warmup_ratio=0.0", "--train.lr=1e-3",
          "--train.seed=0", "--train.save_steps=0"]
JSON_DATA = ["--data.format=llava", f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}"]


def worker(argv) -> int:
    """Script mode: ``[--stop-after N] OVERRIDES...``: train, and after a stop resume in the same processes."""
    from mmit.config.schema import load_config
    from mmit.training.trainer import train

    stop = None
    if argv[:1] == ["--stop-after"]:
        stop, argv = int(argv[1]), argv[2:]
    cfg = load_config(str(TINY), list(argv))
    train(cfg, stop_after_steps=stop)
    if stop is not None:
        cfg.train.resume = True
        train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))

import pytest  # noqa: E402  (script mode above needs none of this)
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mmit.training.metrics import read_metrics  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(k, None)
    return env


class Launch:
    """A multi-process run started in the background (the one-process reference trains meanwhile, while
    the launch is mostly importing), its output in files beside ``log_dir``."""

    def __init__(self, cmd, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.cmd, self.out, self.err = cmd, log_dir / "launch.out", log_dir / "launch.err"
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=o, stderr=e, text=True)

    def wait(self, timeout: float = 300) -> str:
        """Its stdout; fails the test on a non-zero exit, with the output's tails."""
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        out, err = self.out.read_text(), self.err.read_text()
        assert rc == 0, f"{self.cmd[:6]} exited {rc}:\n{out[-3000:]}\n{err[-6000:]}"
        return out


def torchrun(*args):
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), *args]


def accelerate(config: str, *args):
    return [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs" / "accelerate" / config),
            "--num_processes", "2", "--main_process_port", str(_port()), *args]


def one_process(run: Path, *overrides) -> Path:
    """The reference: one process, gradient accumulation 2, in this process, with one thread as
    the launched processes have (``OMP_NUM_THREADS=1``): another thread count sums the matmuls in
    another order, and Adam turns that rounding into update differences for near-zero gradients."""
    from mmit.config.schema import load_config
    from mmit.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_config(str(TINY), [*COMMON, *overrides, f"--train.output_dir={run}",
                                             "--train.gradient_accumulation_steps=2"]))
    finally:
        torch.set_num_threads(threads)


def assert_same_weights(a: Path, b: Path, tol: float = 1e-5) -> dict:
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and len(wa) > 10
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= tol, f"weights differ by {worst}"
    print(f"{a.name} vs {b.name}: weights differ by at most {worst:.2e}")
    return wa


def assert_logged_once(run: Path, steps: int, runs: int = 1) -> None:
    """Every step once in metrics.jsonl; the parameter table once per run (``runs``: a resume is a second)."""
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, steps + 1))
    log = (run / "train.log").read_text()
    assert log.count("parameters:") == runs, "only the main process writes train.log"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The 50 usable demo records as one shard and as 10 shards of 5."""
    from mmit.cli import main as cli

    out = {}
    for name, size in (("one", 100), ("ten", 5)):
        d = tmp_path_factory.mktemp("shards") / name
        assert cli(["convert", "--format", "llava", "--input", str(DEMO_JSON), "--media-root", str(DEMO_IMAGES),
                    "--output", str(d), "--shard-size", str(size), "--no-progress"]) == 0
        out[name] = d
    assert len(list(out["ten"].glob("*.tar"))) == 10
    return out


# -- the data split (in this process) -----------------------------------------------------------------
def test_blocks_give_every_rank_the_same_count_and_pad_from_the_start():
    from mmit.training.split import blocks_per_rank, rank_blocks, take_blocks

    for n, block, world in [(50, 2, 2), (7, 2, 2), (5, 4, 3), (1, 3, 2), (12, 5, 4), (0, 2, 2)]:
        parts = [[i for r in rank_blocks(n, block, rank, world) for i in r] for rank in range(world)]
        assert all(len(rank_blocks(n, block, rank, world)) == blocks_per_rank(n, block, world) for rank in range(world))
        assert sorted(set(i for p in parts for i in p)) == list(range(n))  # every sample somewhere
        streamed = [list(take_blocks(iter(range(n)), block, rank, world)) for rank in range(world)]
        assert streamed == parts  # the streaming form agrees
    assert [list(r) for r in rank_blocks(5, 2, 1, 2)] == [[2, 3], [0, 1]]  # 3 blocks: rank 1 repeats block 0


def test_one_shard_is_split_by_sample_and_ten_shards_by_shard(shards, tmp_path):
    from conftest import tiny_run_config
    from mmit.training.data import SampleStream

    cfg = tiny_run_config(tmp_path).data
    cfg.format, cfg.shuffle_buffer = "shards", 0
    for name, split in (("one", "sample"), ("ten", "shard")):
        cfg.path = str(shards[name])
        streams = [SampleStream(cfg, 0, rank, 2, block=5) for rank in (0, 1)]
        ids = [[s.id for s in st.epoch(0)] for st in streams]
        assert [st.split for st in streams] == [split, split]
        assert len(ids[0]) == len(ids[1]) == len(streams[0]) == len(streams[1]) == 25, name
        assert not set(ids[0]) & set(ids[1]) and len(set(ids[0]) | set(ids[1])) == 50
        assert streams[0].mixed_media() is True  # the demo has text-only records


def test_unbalanced_shards_fall_back_to_the_sample_split():
    from mmit.training.split import assign_shards, shard_split

    assert assign_shards([16, 16, 16, 2], 2) == [[0, 2], [1, 3]]
    assert shard_split([16, 16, 16, 2], 2) is None  # 14 of 50 repeated: split by sample instead
    assert shard_split([5] * 10, 2) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert shard_split([5] * 10 + [None], 2) is None and shard_split([5], 2) is None


def test_find_unused_parameters_only_for_mixed_media(monkeypatch):
    from mmit.training.distributed import find_unused_parameters

    assert find_unused_parameters(False, {})[0] is False
    assert find_unused_parameters(True, {})[0] is True and find_unused_parameters(None, {})[0] is True
    assert find_unused_parameters(True, {"MMIT_DDP_FIND_UNUSED": "0"})[0] is False
    with pytest.raises(ValueError):
        find_unused_parameters(True, {"MMIT_DDP_FIND_UNUSED": "maybe"})


def test_unused_tower_tail_is_frozen_and_left_out_of_checkpoints(tmp_path):
    from conftest import tiny_run_config
    from mmit.training.trainer import train

    cfg = tiny_run_config(tmp_path, stage="full", max_steps=1)
    cfg.model.vision_tower.select_layer = -2  # 3 blocks: the third never reaches the features
    run = train(cfg)
    saved = load_file(str(run / "final" / "model.safetensors"))
    tower = {k for k in saved if k.startswith("vision_tower.")}
    assert any(".encoder.layers.1." in k for k in tower)
    assert not any(".encoder.layers.2." in k or "post_layernorm" in k for k in tower)
    assert "never reach the features: frozen" in (run / "train.log").read_text()


# -- launches --------------------------------------------------------------------------------------
def test_accelerate_cpu_launch_of_two_processes_is_an_error(tmp_path):
    from mmit.training.distributed import check_launch

    argv = ["python", "/x/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "mmit.cli", "train"]
    with pytest.raises(ValueError, match="started 1 process although 2"):
        check_launch({"ACCELERATE_USE_CPU": "True"}, argv)
    check_launch({"ACCELERATE_USE_CPU": "True", "WORLD_SIZE": "2"}, argv)  # really two: fine
    check_launch({"ACCELERATE_USE_CPU": "True"}, argv[:4])  # one asked: fine
    out = subprocess.run([str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "-m", "mmit.cli",
                          "train", "--config_path", str(TINY), *COMMON, *JSON_DATA, f"--train.output_dir={tmp_path}"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "started 1 process although 2 were asked for" in out.stderr


def test_ddp_json_full_stage_select_layer_equals_one_process_with_accumulation(tmp_path):
    """`stage: full` with `select_layer: -2` (the tower's last block unused) in 2-process DDP on a
    source file (every process reads it whole and keeps its blocks)."""
    args = [*COMMON, *JSON_DATA, "--train.stage=full", "--train.batch_size=2", "--train.max_steps=3"]
    ddp = tmp_path / "ddp"
    launch = Launch(torchrun("-m", "mmit.cli", "train", "--config_path", str(TINY), *args,
                             f"--train.output_dir={ddp}"), tmp_path)
    ref = one_process(tmp_path / "one", *JSON_DATA, "--train.stage=full", "--train.batch_size=2", "--train.max_steps=3")
    assert launch.wait().count("run folder:") == 1, "only the main process prints"
    assert_logged_once(ddp, 3)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["samples_per_process"] == [6, 6]
    assert summary["skipped"] == {"missing-media": 1}  # the reader's skip, counted once; no processor skip
    weights = assert_same_weights(ddp, ref)
    assert not any(".encoder.layers.2." in k for k in weights)


def test_ddp_ten_shards_through_the_accelerate_ddp_config_equals_one_process(shards, tmp_path):
    data = ["--data.format=shards", f"--data.path={shards['ten']}", "--data.shuffle_buffer=0"]
    args = [*COMMON, *data, "--train.stage=finetune", "--train.batch_size=5", "--train.max_steps=2"]
    ddp = tmp_path / "ddp"
    launch = Launch(accelerate("ddp.yaml", "-m", "mmit.cli", "train", "--config_path", str(TINY), *args,
                               f"--train.output_dir={ddp}"), tmp_path)
    ref = one_process(tmp_path / "one", *data, "--train.stage=finetune", "--train.batch_size=5", "--train.max_steps=2")
    launch.wait()
    assert_logged_once(ddp, 2)
    assert "data split by shard" in (ddp / "train.log").read_text()
    assert json.loads((ddp / "summary.json").read_text())["samples_per_process"] == [10, 10]
    assert_same_weights(ddp, ref)


def test_ddp_one_shard_stop_and_resume_is_exact(shards, tmp_path):
    data = ["--data.format=shards", f"--data.path={shards['one']}", "--data.shuffle_buffer=0"]
    args = [*COMMON, *data, "--train.stage=finetune", "--train.batch_size=2", "--train.max_steps=4"]
    ddp = tmp_path / "ddp"
    launch = Launch(torchrun(str(Path(__file__)), "--stop-after", "3", *args, "--train.save_steps=2",
                             f"--train.output_dir={ddp}"), tmp_path)
    ref = one_process(tmp_path / "one", *data, "--train.stage=finetune", "--train.batch_size=2", "--train.max_steps=4")
    launch.wait()
    state = json.loads((ddp / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and [r["position"] for r in state["ranks"]] == [8, 8]
    assert_logged_once(ddp, 4, runs=2)  # steps 1-3, then 3-4 again after the resume from step 2: each once
    assert_same_weights(ddp, ref)


def test_fsdp_trains_checkpoints_resumes_exactly_and_loads_in_one_process(tmp_path):
    """FSDP2 over gloo (accelerate leaves FSDP off on CPU; mmit turns it on): stop after step 3, resume
    from the step-2 checkpoint (full weights + full optimizer state), and compare with one process."""
    from mmit.training.checkpoint import load_model_from_checkpoint

    args = [*COMMON, *JSON_DATA, "--train.stage=finetune", "--train.batch_size=2", "--train.max_steps=4"]
    run = tmp_path / "fsdp"
    launch = Launch(accelerate("fsdp.yaml", str(Path(__file__)), "--stop-after", "3", *args, "--train.save_steps=2",
                               f"--train.output_dir={run}"), tmp_path)
    ref = one_process(tmp_path / "one", *JSON_DATA, "--train.stage=finetune", "--train.batch_size=2",
                      "--train.max_steps=4")
    launch.wait()
    log = (run / "train.log").read_text()
    assert "2 processes (FSDP)" in log and "LlamaDecoderLayer" in log
    assert_logged_once(run, 4, runs=2)
    opt = torch.load(run / "checkpoints" / "step-0000004" / "optimizer.pt", weights_only=True)
    assert any(isinstance(k, str) and k.startswith("llm.") for k in opt["state"]), "the full state, by name"
    weights = assert_same_weights(run, ref)
    model, _, _ = load_model_from_checkpoint(run)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in weights.items())


def test_deepspeed_configs_parse_through_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin
    from torch import nn

    from mmit.training.distributed import fill_deepspeed_config

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.llm = nn.Linear(4, 4)
            self.llm.config = type("C", (), {"hidden_size": 64})()

    for stage in (2, 3):
        launch = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"zero{stage}.yaml"))
        assert launch.distributed_type == "DEEPSPEED"
        plugin = DeepSpeedPlugin(hf_ds_config=str(ROOT / launch.deepspeed_config["deepspeed_config_file"]))
        assert plugin.zero_stage == stage
        plugin.set_mixed_precision("bf16")
        ds = fill_deepspeed_config(plugin, batch_size=4, gradient_accumulation_steps=2, max_grad_norm=1.0, world=8,
                                   model=Tiny())
        assert "auto" not in json.dumps(ds), ds
        assert (ds["train_batch_size"], ds["gradient_clipping"], ds["bf16"]["enabled"]) == (64, 1.0, True)
        assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    for name, kind in (("ddp", "MULTI_GPU"), ("fsdp", "FSDP")):
        launch = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
        assert launch.distributed_type == kind
    assert launch.fsdp_config["fsdp_version"] == 2
