"""`mmit convert --distributor ray` on a local one-CPU Ray instance writes the same bytes as the
local run; a missing Ray gives an error naming the `[ray]` extra."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_IMAGES, DEMO_JSON
from mmit.data.convert import convert, main
from mmit.data.distribute import LocalDistributor, RayDistributor, get_distributor

ROOT = Path(__file__).resolve().parents[1]


def shard_files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
            if p.suffix == ".tar" or (p.name.endswith("_stats.json") and p.name[0] != "_")}


def test_ray_shards_are_byte_identical_to_local(tmp_path):
    ray = pytest.importorskip("ray")
    common = dict(media_root=str(DEMO_IMAGES), shard_size=12, resize_max_side=48, progress=False)
    local = convert("llava", str(DEMO_JSON), str(tmp_path / "local"), **common)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        remote = convert("llava", str(DEMO_JSON), str(tmp_path / "ray"), distributor="ray",
                         workers=2, **common)
        # resuming under Ray: a deleted shard is rebuilt by a Ray task, the rest is kept
        (tmp_path / "ray" / "00002_stats.json").unlink()
        again = convert("llava", str(DEMO_JSON), str(tmp_path / "ray"), distributor="ray",
                        **common)
        assert ray.is_initialized(), "a Ray session started by the caller is left running"
    finally:
        ray.shutdown()
    assert remote["distributor"] == "ray" and remote["shards"] == local["shards"] == 5
    for s in (local, remote, again):
        assert s["records_in"] == s["written"] + sum(s["skipped"].values()) == 51
    assert remote["skipped"] == local["skipped"] == {"missing-media": 1}
    assert again["reused_shards"] == 4
    assert shard_files(tmp_path / "ray") == shard_files(tmp_path / "local")
    assert len(shard_files(tmp_path / "local")) == 10


def test_missing_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(ImportError, match=r"mmit\[ray\]"):
        RayDistributor()
    code = main(["--format", "llava", "--input", str(DEMO_JSON), "--media-root", str(DEMO_IMAGES),
                 "--output", str(tmp_path / "o"), "--distributor", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "mmit[ray]" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists(), "nothing is written before the distributor exists"


def test_ray_is_not_imported_by_a_local_run(tmp_path):
    code = ("import sys, mmit.data.convert as c; "
            f"c.convert('llava', {str(DEMO_JSON)!r}, {str(tmp_path / 'o')!r}, "
            f"media_root={str(DEMO_IMAGES)!r}, progress=False); print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_local_distributor_order_and_errors():
    d = get_distributor("local", 2)
    assert isinstance(d, LocalDistributor)
    try:
        assert list(d.map(abs, range(-20, 0))) == list(range(20, 0, -1))
        with pytest.raises(TypeError):
            list(d.map(abs, ["x"]))
    finally:
        d.close()
    with pytest.raises(ValueError, match="unknown distributor"):
        get_distributor("dask")
