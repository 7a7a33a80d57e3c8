"""Checkpoints and configs are data, never code (issue 16, point 4).

* A checkpoint's ``config.yaml`` cannot turn on ``trust_remote_code``: an ``auto_map`` in the LLM
  folder it names runs only when the command line of the run allows it (``mmit generate
  --trust-remote-code``; ``mmit train --model.llm.trust_remote_code=true``).
* ``!include`` and every other custom or Python YAML tag are refused in a checkpoint's config with a
  ``ValueError`` naming the file and the tag, never the include target or its content.
* User configs (``--config_path``) are read with the safe loader too: Python tags refused,
  ``!include`` kept (relative to the file), errors with file:line:column and no file text.

Each test says why it fails on the code before this change (draccus' ``FullLoaderWithInclusion`` for
every config, ``trust_remote_code`` taken from the checkpoint's config). That was checked by running
this file against ``git archive HEAD`` of the tree before the change: every test here failed there
except ``test_user_config_include_still_works`` and ``test_command_line_trust_for_training``, which
pin behaviour that must stay.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, tiny_run_config

SECRET = "s3cr3t-4f9c2e-do-not-echo"

#: The custom code a malicious checkpoint ships in its LLM folder: importing it writes the marker.
REMOTE_CODE = '''\
import pathlib

pathlib.Path({marker!r}).write_text("remote code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class EvilLlamaConfig(LlamaConfig):
    model_type = "evil-llama"


class EvilLlamaForCausalLM(LlamaForCausalLM):
    config_class = EvilLlamaConfig
'''


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny LLaVA saved through ``save_checkpoint`` (config.yaml, weights, tokenizer)."""
    from mmit.families import get_family
    from mmit.training.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("ckpt-is-data")
    cfg = tiny_run_config(tmp)
    fam = get_family("llava")
    torch.manual_seed(0)
    model, tokenizer = fam.build(cfg, torch.float32)
    return save_checkpoint(tmp / "ckpt", model=model, cfg=fam.checkpoint_config(cfg), tokenizer=tokenizer,
                           trainer_state={"step": 0})


def _copy(ckpt: Path, dst: Path) -> Path:
    shutil.copytree(ckpt, dst)
    return dst


def _edit_config(ckpt: Path, edit) -> None:
    d = yaml.safe_load((ckpt / "config.yaml").read_text())
    edit(d)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(d))


def _set_template_line(ckpt: Path, value: str) -> None:
    """Replace the ``template:`` value of the config text by ``value`` (raw YAML, e.g. a tagged node)."""
    lines = (ckpt / "config.yaml").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith("template:"))
    lines[i] = lines[i].split("template:")[0] + "template: " + value
    (ckpt / "config.yaml").write_text("\n".join(lines) + "\n")


def _remote_code_ckpt(tiny_ckpt: Path, tmp: Path, local_class: bool = True):
    """A checkpoint whose config asks for ``trust_remote_code`` and names its own ``llm/`` folder, a
    copy of the tiny LLM with an ``auto_map`` to ``evil_llama.py`` (which writes ``marker`` when
    imported). ``local_class=False``: the folder's ``model_type`` exists only as that custom code."""
    from mmit.models.llm import resolve_llm_path

    ckpt = _copy(tiny_ckpt, tmp / "ckpt")
    llm = ckpt / "llm"
    shutil.copytree(resolve_llm_path("tiny-llama"), llm)
    marker = tmp / "remote-code-ran"
    (llm / "evil_llama.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    conf = json.loads((llm / "config.json").read_text())
    conf["auto_map"] = {"AutoModelForCausalLM": "evil_llama.EvilLlamaForCausalLM"}
    if not local_class:
        conf["model_type"] = "evil-llama"
        conf["auto_map"]["AutoConfig"] = "evil_llama.EvilLlamaConfig"
    (llm / "config.json").write_text(json.dumps(conf))

    def ask(d):
        d["model"]["llm"]["name_or_path"] = "llm"  # relative: resolved against the checkpoint folder
        d["model"]["llm"]["trust_remote_code"] = True

    _edit_config(ckpt, ask)
    return ckpt, marker


def _mmit(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m mmit.cli ARGS`` in a fresh process (transformers' module cache under ``tmp``, so the
    imported custom code neither leaks between tests nor into the user's cache)."""
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp / "hf-modules"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mmit.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp), env=env)


# -- (a) trust_remote_code only from the command line ---------------------------------------------

def test_generate_does_not_run_a_checkpoints_remote_code(tiny_ckpt, tmp_path):
    # Before: load_model_from_checkpoint passed the saved ``trust_remote_code: true`` to
    # AutoModelForCausalLM.from_pretrained, which imported evil_llama.py: the marker existed.
    ckpt, marker = _remote_code_ckpt(tiny_ckpt, tmp_path)
    r = _mmit(tmp_path, "generate", "--checkpoint", str(ckpt), "--prompt", "Hello", "--max-new-tokens", "2",
              "--json")
    assert not marker.exists(), "the checkpoint's own code ran without --trust-remote-code"
    assert r.returncode == 0, r.stderr
    assert "text" in json.loads(r.stdout.strip().splitlines()[-1])  # transformers' own Llama class was used


def test_generate_with_trust_remote_code_flag_runs_it(tiny_ckpt, tmp_path):
    # Before: there was no --trust-remote-code (argparse: "unrecognized arguments", exit 2). The flag is
    # what allows the code now.
    ckpt, marker = _remote_code_ckpt(tiny_ckpt, tmp_path)
    r = _mmit(tmp_path, "generate", "--checkpoint", str(ckpt), "--prompt", "Hello", "--max-new-tokens", "2",
              "--trust-remote-code")
    assert r.returncode == 0, r.stderr
    assert marker.read_text() == "remote code ran"


def test_custom_only_model_type_fails_with_a_clear_error(tiny_ckpt, tmp_path):
    # Before: trust_remote_code came from the checkpoint, the code ran and the model loaded.
    ckpt, marker = _remote_code_ckpt(tiny_ckpt, tmp_path, local_class=False)
    r = _mmit(tmp_path, "generate", "--checkpoint", str(ckpt), "--prompt", "Hello", "--max-new-tokens", "2")
    assert not marker.exists()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("mmit generate: error:") and "trust_remote_code" in r.stderr


def test_load_model_from_checkpoint_forces_the_callers_value(tiny_ckpt, tmp_path, caplog):
    # Before: the function had no trust_remote_code parameter (TypeError) and kept the saved True.
    from mmit.training.checkpoint import load_model_from_checkpoint

    ckpt = _copy(tiny_ckpt, tmp_path / "ckpt")
    _edit_config(ckpt, lambda d: d["model"]["llm"].update(trust_remote_code=True))
    with caplog.at_level(logging.WARNING, logger="mmit"):
        _, _, cfg = load_model_from_checkpoint(ckpt, trust_remote_code=False)
    assert cfg.model.llm.trust_remote_code is False
    assert any("model.llm.trust_remote_code" in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records)
    _, _, cfg = load_model_from_checkpoint(ckpt, trust_remote_code=True)
    assert cfg.model.llm.trust_remote_code is True


def test_user_config_file_cannot_turn_on_remote_code(tmp_path, caplog):
    # Before: ``trust_remote_code: true`` in any config file was honoured (the shipped configs already
    # promised "only with --model.llm.trust_remote_code=true on the command line").
    from mmit.config.schema import load_config

    p = tmp_path / "c.yaml"
    p.write_text("model:\n  llm:\n    name_or_path: tiny-llama\n    trust_remote_code: true\n")
    with caplog.at_level(logging.WARNING, logger="mmit"):
        cfg = load_config(str(p))
    assert cfg.model.llm.trust_remote_code is False and cfg.model.llm.name_or_path == "tiny-llama"
    assert any("--model.llm.trust_remote_code=true" in r.getMessage() for r in caplog.records)


def test_command_line_trust_for_training():
    # Unchanged behaviour: the command line of the training run allows it.
    from mmit.config.schema import load_config

    assert load_config(None, ["--model.llm.trust_remote_code=true"]).model.llm.trust_remote_code is True
    assert load_config(None, []).model.llm.trust_remote_code is False


# -- (b) !include refused in checkpoint configs, its target never echoed ----------------------------

@pytest.mark.parametrize("where", ["absolute", "relative", "hostname"])
def test_checkpoint_include_is_refused_without_echoing(tiny_ckpt, tmp_path, where):
    # Before: draccus' FullLoaderWithInclusion read the file; its content became model.template and came
    # back in the "unknown template" error (or loaded silently): no ValueError naming !include.
    from mmit.training.checkpoint import load_model_from_checkpoint

    ckpt = _copy(tiny_ckpt, tmp_path / "ckpt")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    (ckpt / "secret.txt").write_text(SECRET + "\n")
    target = {"absolute": str(secret), "relative": "secret.txt", "hostname": "/etc/hostname"}[where]
    _set_template_line(ckpt, f"!include {target}")
    with pytest.raises(ValueError) as e:
        load_model_from_checkpoint(ckpt)
    msg = str(e.value)
    assert "config.yaml" in msg and "!include" in msg and "refused" in msg
    assert SECRET not in msg and target not in msg
    if where == "hostname" and os.path.isfile("/etc/hostname"):
        host = Path("/etc/hostname").read_text().strip()
        assert not host or host not in msg.replace(str(ckpt), "")
    if where == "absolute":  # and through the command: one line on stderr, no secret
        r = _mmit(tmp_path, "generate", "--checkpoint", str(ckpt), "--prompt", "hi")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "!include" in r.stderr and SECRET not in r.stderr + r.stdout and str(secret) not in r.stderr


def test_checkpoint_include_as_merge_key_is_refused(tiny_ckpt, tmp_path):
    # Before: ``<<: !include FILE`` read the file and merged its keys into the section (draccus' merge
    # hack; keys the section has win, so this one loaded without a word): no ValueError.
    from mmit.training.checkpoint import load_model_from_checkpoint

    ckpt = _copy(tiny_ckpt, tmp_path / "ckpt")
    (tmp_path / "extra.yaml").write_text(f"template: {SECRET}\n")
    text = (ckpt / "config.yaml").read_text().replace("model:\n", f"model:\n  <<: !include {tmp_path / 'extra.yaml'}\n", 1)
    (ckpt / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match="!include") as e:
        load_model_from_checkpoint(ckpt)
    assert SECRET not in str(e.value) and "extra.yaml" not in str(e.value)


# -- (c) Python and other custom tags refused -------------------------------------------------------

@pytest.mark.parametrize("node, tag", [
    ("!!python/object:argparse.Namespace {}", "!!python/object:argparse.Namespace"),
    ("!!python/object/apply:os.system ['touch pwned']", "!!python/object/apply:os.system"),
    ("!!python/name:os.getcwd", "!!python/name:os.getcwd"),
    ("!!python/tuple [a, b]", "!!python/tuple"),
    ("!env HOME", "!env"),
])
def test_checkpoint_python_and_custom_tags_are_refused(tiny_ckpt, tmp_path, node, tag):
    # Before: FullLoader built python/name and python/tuple values (the template became
    # '<built-in function getcwd>' and "('a', 'b')": UnknownNameError, not a refusal) and failed on
    # python/object and !env with draccus' ParsingError "Failed to load config from <stream>" (not a
    # ValueError, no line).
    from mmit.training.checkpoint import load_model_from_checkpoint

    ckpt = _copy(tiny_ckpt, tmp_path / "ckpt")
    _set_template_line(ckpt, node)
    line = next(i for i, t in enumerate((ckpt / "config.yaml").read_text().splitlines(), 1) if "template:" in t)
    with pytest.raises(ValueError) as e:
        load_model_from_checkpoint(ckpt)
    msg = str(e.value)
    assert f"config.yaml:{line}:" in msg and repr(tag) in msg and "refused" in msg
    assert not (tmp_path / "pwned").exists()


def test_user_config_python_tag_is_refused(tmp_path):
    # Before: FullLoader gave os.getcwd (a function) to draccus, which accepted it: no error.
    from mmit.config.schema import load_config

    p = tmp_path / "c.yaml"
    p.write_text("train:\n  output_dir: !!python/name:os.getcwd\n")
    with pytest.raises(ValueError, match=r"c\.yaml:2:.*'!!python/name:os\.getcwd'.*refused"):
        load_config(str(p))
    with pytest.raises(ValueError, match=r"--train\.output_dir.*!!python/name"):
        load_config(None, ["--train.output_dir=!!python/name:os.getcwd"])


# -- user configs: !include kept, errors without file text ------------------------------------------

def test_user_config_include_still_works(tmp_path):
    # --config_path configs keep draccus' !include (relative to the file, merge key too).
    from mmit.config.schema import load_config

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.yaml").write_text("max_steps: 7\nlr: 0.5\n")
    (tmp_path / "sub" / "llm.yaml").write_text("name_or_path: tiny-llama\n")
    p = tmp_path / "c.yaml"
    p.write_text("train: !include sub/train.yaml\nmodel:\n  <<: !include sub/llm_section.yaml\n")
    (tmp_path / "sub" / "llm_section.yaml").write_text("llm: !include llm.yaml\n")  # relative to sub/
    cfg = load_config(str(p), ["--train.lr=0.25"])
    assert cfg.train.max_steps == 7 and cfg.train.lr == 0.25 and cfg.model.llm.name_or_path == "tiny-llama"


def test_user_config_include_cycle_and_parse_error_name_file_not_text(tmp_path):
    # Before: a cycle was draccus' ParsingError "Failed to load config from <stream>" over a
    # RecursionError (not a ValueError); a parse error in an included file was the same ParsingError,
    # naming neither the included file nor a line.
    from mmit.config.schema import load_config

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("train: !include b.yaml\n")
    b.write_text("x: !include a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(str(a))
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"max_steps: 3\nnote: ['{SECRET}'\n")  # unclosed flow sequence
    a.write_text("train: !include bad.yaml\n")
    with pytest.raises(ValueError) as e:
        load_config(str(a))
    msg = str(e.value)
    assert f"{bad}:" in msg and "invalid YAML" in msg and SECRET not in msg
    assert msg.split(":")[1].isdigit() and msg.split(":")[2].isdigit()  # line and column


def test_eval_passes_trust_remote_code_only_from_its_flag(tiny_ckpt, tmp_path, monkeypatch):
    # Before: mmit eval had no --trust-remote-code: it was handed on to the suite's draccus overrides
    # (an unknown key there) and the checkpoint's own config decided; nothing loaded with the caller's value.
    import mmit.evaluation.report
    import mmit.evaluation.runner
    import mmit.inference
    from mmit.evaluation.cli import main as eval_main

    loads, runs = [], []
    monkeypatch.setattr(mmit.inference, "load_for_inference",
                        lambda ckpt, **kw: loads.append((ckpt, kw)) or ("model", "processor", None))
    monkeypatch.setattr(mmit.evaluation.runner, "run_suite",
                        lambda *a, **kw: runs.append((a, kw)) or {"tasks": {}})
    monkeypatch.setattr(mmit.evaluation.report, "format_table", lambda results: "")
    args = ["--config_path", "suite.yaml", "--checkpoint", str(tiny_ckpt), "--output", str(tmp_path / "o"), "--quiet"]
    assert eval_main(args) == 0
    assert loads == [] and "model" not in runs[-1][1]  # run_suite loads it, without remote code
    assert eval_main(args + ["--trust-remote-code"]) == 0
    assert loads == [(str(tiny_ckpt), {"trust_remote_code": True})]
    assert runs[-1][1]["model"] == "model" and "--trust-remote-code" not in runs[-1][0][3]
