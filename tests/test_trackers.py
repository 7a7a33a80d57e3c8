"""``train.report_to``: wandb and mlflow through accelerate's trackers, in their offline modes (no
network), beside tensorboard and ``metrics.jsonl``; bad names fail when the config loads."""

import json

import pytest

from mmit.config.trackers import parse_report_to
from mmit.training.metrics import read_metrics
from mmit.training.trainer import train
from conftest import tiny_run_config


def test_parse_report_to():
    assert parse_report_to("tensorboard") == ["tensorboard"]
    assert parse_report_to(" tensorboard , wandb,mlflow") == ["tensorboard", "wandb", "mlflow"]
    assert parse_report_to("none") == [] and parse_report_to("") == []
    with pytest.raises(ValueError, match="did you mean 'mlflow'"):
        parse_report_to("mlfow")
    with pytest.raises(ValueError, match="twice"):
        parse_report_to("wandb,wandb")


def test_bad_report_to_fails_before_any_model_is_built(tmp_path, monkeypatch):
    import mmit.training.trainer as trainer

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(trainer, "check_launch", no_model)  # the first thing train() does after the check
    with pytest.raises(ValueError, match="unknown train.report_to 'tensorbord'"):
        train(tiny_run_config(tmp_path, report_to="tensorbord"))


def test_mlflow_offline_gets_every_logged_step(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = train(tiny_run_config(tmp_path, max_steps=4, logging_steps=2, report_to="mlflow",
                                tracker_project="mmit-test", run_name="tiny"))
    rows = read_metrics(run / "metrics.jsonl")
    import mlflow
    from mlflow.tracking import MlflowClient

    from mmit.training.metrics import mlflow_uri

    client = MlflowClient(tracking_uri=mlflow_uri(run))
    exp = client.get_experiment_by_name("mmit-test")
    assert exp is not None
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.run_name == "tiny" and r.info.status == "FINISHED"
    history = client.get_metric_history(r.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(x["step"], pytest.approx(x["loss"])) for x in rows]
    assert r.data.params["train.lr"] == "0.001" and r.data.params["model.llm.name_or_path"] == "tiny-llama"
    mlflow.set_tracking_uri(None)


def test_wandb_offline_run_beside_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run = train(tiny_run_config(tmp_path, max_steps=4, logging_steps=2, report_to="tensorboard,wandb"))
    rows = read_metrics(run / "metrics.jsonl")
    assert [x["step"] for x in rows] == [2, 4]
    assert any((run / "tensorboard").iterdir())
    (offline,) = list((run / "wandb").glob("offline-run-*"))
    (record_file,) = list(offline.glob("run-*.wandb"))  # what `wandb sync` uploads later
    # the run file holds protobuf records whose history values are JSON text: every logged loss and
    # the flattened config are in it (wandb no longer ships a reader for this format)
    raw = record_file.read_bytes()
    assert raw.count(b"train/loss") >= len(rows)
    for x in rows:
        assert json.dumps(x["loss"]).encode() in raw
    assert b"train.max_steps" in raw and b"model.llm.name_or_path" in raw
