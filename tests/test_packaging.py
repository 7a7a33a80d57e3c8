"""Packaging (issue 15): licence files, SPDX licence, lower bounds, extras that keep a LLaVA-only install
free of diffusion / eval / serving packages, and a wheel that ships the configs and trains one by name."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import DEMO_IMAGES, DEMO_JSON, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Packages a LLaVA-only user must not need (import names).
OPTIONAL = ["diffusers", "open_clip", "timm", "pycocoevalcap", "sklearn", "rouge_score", "nltk", "pyarrow", "av",
            "ray", "bitsandbytes", "gradio", "fastapi", "uvicorn", "httpx", "wandb", "mlflow", "starlette"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def test_licence_files_and_spdx_string():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and set(project["license-files"]) == {"LICENSE", "NOTICE"}
    lic = (ROOT / "LICENSE").read_text()
    assert "Apache License" in lic and "Version 2.0, January 2004" in lic and "END OF TERMS AND CONDITIONS" in lic
    notice = (ROOT / "NOTICE").read_text()
    # the CC BY-NC 4.0 record NOTICE names is in the demo data, and the demo README says the same
    assert "CC BY-NC 4.0" in notice and "000000319154" in notice
    assert "000000319154" in {r["id"] for r in json.loads(DEMO_JSON.read_text())}
    assert "000000319154" in (ROOT / "demo_data" / "README.md").read_text()


def test_dependencies_have_lower_bounds_and_optional_packages_are_extras():
    deps = PYPROJECT["project"]["dependencies"]
    assert not [d for d in deps if "<=" in d or "==" in d], "pins belong in the Makefile"
    core = " ".join(deps).lower()
    for dist in ("diffusers", "open_clip_torch", "pycocoevalcap", "scikit-learn", "pyarrow", "av>", "gradio", "timm"):
        assert dist not in core, dist
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name in ("diffusion", "eval", "video", "audio", "serve", "ray", "qlora", "all", "test"):
        assert name in extras, name
    from mmit.extras import EXTRAS

    for module, (extra, dist) in EXTRAS.items():  # every hint names an extra that installs the package
        if extra is not None:
            assert any(r.lower().startswith(dist.lower()) for r in extras[extra]), (module, extra, dist)
            assert extra in extras["all"][0] or extra in ("qlora",), extra


def test_optional_packages_are_imported_lazily():
    """No module of mmit imports an optional package at module level (it would break `import mmit`
    and a LLaVA run without the extra)."""
    bad = []
    for path in (ROOT / "mmit").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [(str(path.relative_to(ROOT)), n) for n in names if n.split(".")[0] in OPTIONAL]
    assert not bad


def test_llava_imports_and_trains_without_the_extras(tmp_path):
    """A fresh interpreter with every optional package blocked (``sys.modules[name] = None``): ``import
    mmit`` works, a LLaVA run trains a step, and asking for InstructPix2Pix names the extra to install
    before any model is built."""
    script = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None
        import mmit, mmit.cli
        rc = mmit.cli.main(["train", "--config_path", "llava/tiny_demo", "--data.path={DEMO_JSON}",
                            "--data.media_root={DEMO_IMAGES}", "--model.llm.name_or_path=tiny-llama",
                            "--train.max_steps=1", "--train.batch_size=2", "--train.progress_bar=false",
                            "--train.output_dir={tmp_path / 'run'}"])
        assert rc == 0, rc
        rc = mmit.cli.main(["train", "--config_path", "instructpix2pix/tiny", "--train.output_dir={tmp_path / 'ip2p'}"])
        assert rc == 2, rc
        assert not any(sys.modules.get(n) for n in {OPTIONAL!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pip install 'mmit[diffusion]'" in r.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert not (tmp_path / "ip2p" / "config.yaml").exists()  # stopped before the trainer started


def _copy_source(dst: Path) -> None:
    """The files a build reads, copied (the shared checkout's build/ folder is left alone)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mmit", "configs"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "NOTICE", "MANIFEST.in"):
        shutil.copy(ROOT / name, dst / name)


def test_wheel_ships_the_configs_and_trains_one_by_name(tmp_path):
    src, wheels, target, work = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    _copy_source(src)
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("mmit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert all(f"mmit/_configs/{s}" in names for s in shipped)
    assert not [n for n in names if n.startswith(("demo_data", "tests/"))]
    assert any(n.endswith("licenses/LICENSE") for n in names) and any(n.endswith("licenses/NOTICE") for n in names)

    r = subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    env = _env(PYTHONPATH=str(target))
    run = lambda *args: subprocess.run([sys.executable, "-m", "mmit.cli", *args], capture_output=True, text=True,
                                       env=env, cwd=work, timeout=600)
    r = subprocess.run([sys.executable, "-c", "import mmit; print(mmit.__file__)"], capture_output=True, text=True,
                       env=env, cwd=work)
    assert r.stdout.strip().startswith(str(target)), r.stdout  # the installed copy, not the checkout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mmit {PYPROJECT_VERSION()}"
    r = run("train", "--config_path", "llava/tiny_demo", f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}",
            "--train.max_steps=2", "--train.batch_size=2", "--train.report_to=none", "--train.progress_bar=false",
            "--train.output_dir=run")
    assert r.returncode == 0, r.stderr[-3000:]
    config = (work / "run" / "config.yaml").read_text()
    assert "tiny-llama-4l" in config and "max_steps: 2" in config
    assert json.loads((work / "run" / "summary.json").read_text())["steps"] == 2


def PYPROJECT_VERSION() -> str:
    import mmit

    return mmit.__version__


@pytest.mark.parametrize("module,extra", [("diffusers", "diffusion"), ("rouge_score", "eval"), ("open_clip", "towers")])
def test_a_missing_extra_names_its_pip_line(module, extra, monkeypatch):
    from mmit.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"pip install 'mmit\[{extra}\]'"):
        require(module, "this test")
    if module == "rouge_score":  # where it is used: the ROUGE-L metric
        from mmit.evaluation.metrics import get_metric

        with pytest.raises(MissingExtraError, match=r"mmit\[eval\]"):
            get_metric("rouge-l").compute([{"prediction": "a", "references": ["a"]}])
