"""What every export folder gets, whatever its format: a model card, normal file modes, and
configs without local paths. Each family's exporter ends with :func:`finish_export`; ``mmit export``
calls it again with the user's checkpoint (after a LoRA merge the family saw a temporary one).

* ``README.md``: a model card in the Hugging Face layout (YAML front matter: ``library_name``,
  ``tags``, ``base_model`` when the base models have hub names; then sections). It lists the base
  models (every ``name`` / ``name_or_path`` of the checkpoint's ``model`` config), the conversation
  template, the training data (format, file name, samples skipped) and stage(s), the training
  figures of ``trainer_state.json``, and the eval results (``results.json`` of ``mmit eval``: score,
  95% interval, chance and majority baseline per task) found in the run folder or passed with
  ``mmit export --eval``. Local paths appear only as their last component.
* Modes: files ``0o666 & ~umask`` and folders ``0o777 & ~umask`` (``model.safetensors`` used to be
  written 0600 by an atomic temporary file), as any ``open()`` would have made them.
* Local paths: in every ``*.json`` of the folder, a ``_name_or_path`` / ``name_or_path`` /
  ``base_model_name_or_path`` value that is a local path (absolute, ``./``, ``../``, ``~``) becomes
  the checkpoint's original name for it when its last component is one (``.../tiny/tiny-llama`` ->
  ``tiny-llama``), else ``""`` (what ``from_config`` models have). An mmit ``config.yaml`` in the
  folder gets ``data.path`` / ``data.media_root`` / ``train.output_dir`` reduced the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import yaml

#: Config keys whose values name a model folder or hub id.
PATH_KEYS = ("_name_or_path", "name_or_path", "base_model_name_or_path")
CARD = "README.md"


# -- local paths -----------------------------------------------------------------------------
def is_local_path(value: Any) -> bool:
    """Whether ``value`` is a str naming a local file or folder (absolute, ``./``, ``../``, ``~``,
    or a Windows drive) rather than a hub id such as ``lmsys/vicuna-7b-v1.5`` or a registry name."""
    if not isinstance(value, str) or not value:
        return False
    return (os.path.isabs(value) or value.startswith(("./", "../", "~", ".\\", "..\\"))
            or (len(value) > 2 and value[1] == ":" and value[2] in "\\/"))


def public_name(value: Optional[str], known: Iterable[str] = ()) -> str:
    """``value`` when it is not a local path; else the one of ``known`` names equal to its last
    component (the original name the path was built or downloaded for), else ``""``."""
    if not value or not is_local_path(value):
        return value or ""
    last = Path(value.rstrip("/\\")).name
    return last if last in set(known) else ""


def _scrub(obj: Any, known: Sequence[str]) -> Any:
    if isinstance(obj, dict):
        return {k: (public_name(v, known) if k in PATH_KEYS and is_local_path(v) else _scrub(v, known))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v, known) for v in obj]
    return obj


def scrub_json_paths(folder: str | os.PathLike, known: Sequence[str] = ()) -> List[Path]:
    """Rewrite every ``*.json`` under ``folder`` whose :data:`PATH_KEYS` hold local paths
    (module docstring); returns the files changed. A file that is not JSON is left alone."""
    changed = []
    for p in sorted(Path(folder).rglob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        new = _scrub(data, known)
        if new != data:
            p.write_text(json.dumps(new, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(p)
    return changed


def scrub_config_yaml(path: str | os.PathLike) -> bool:
    """Reduce the local paths of an mmit ``config.yaml`` (``data.path``, ``data.media_root``,
    ``train.output_dir``) to their last component; returns whether the file changed."""
    p = Path(path)
    cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        return False
    changed = False
    for section, key in (("data", "path"), ("data", "media_root"), ("train", "output_dir")):
        v = (cfg.get(section) or {}).get(key)
        if is_local_path(v):
            cfg[section][key] = Path(v.rstrip("/\\")).name
            changed = True
    if changed:
        p.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return changed


# -- file modes ------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where available, so nothing is changed;
    else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def normalize_modes(folder: str | os.PathLike, umask: Optional[int] = None) -> None:
    """chmod every file under ``folder`` to ``0o666 & ~umask`` and every folder (``folder`` too) to
    ``0o777 & ~umask``; links are left alone."""
    mask = current_umask() if umask is None else umask
    root = Path(folder)
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


# -- model card ------------------------------------------------------------------------------
def _base_models(model_cfg: Dict[str, Any]) -> List[tuple]:
    """``[(component, name)]`` of every ``name`` / ``name_or_path`` in the ``model`` config."""
    out = []
    for comp, sub in model_cfg.items():
        if not isinstance(sub, dict):
            continue
        names = [sub.get(k) for k in ("name", "name_or_path") if isinstance(sub.get(k), str) and sub.get(k)]
        for n in dict.fromkeys(names):
            out.append((comp, n))
    return out


def _find_results(ckpt: Path, extra: Sequence[str | os.PathLike]) -> List[tuple]:
    """``[(label, results dict)]``: the ``extra`` results (files or folders holding
    ``results.json``), else the ``results.json`` files in the checkpoint, its run folder and their
    direct subfolders."""
    paths: List[Path] = []
    if extra:
        for e in extra:
            p = Path(e)
            p = p / "results.json" if p.is_dir() else p
            if not p.is_file():
                raise FileNotFoundError(f"--eval {e}: no results.json there (run `mmit eval --output DIR` first)")
            paths.append(p)
    else:
        run = ckpt.parent if (ckpt.name == "final" or ckpt.name.startswith("step-")) else ckpt
        if run.name == "checkpoints":
            run = run.parent
        for base in dict.fromkeys([ckpt, run]):
            paths += [base / "results.json"] + sorted(base.glob("*/results.json"))
    out = []
    for p in dict.fromkeys(paths):
        if p.is_file():
            try:
                res = json.loads(p.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(res, dict) and isinstance(res.get("tasks"), dict):
                out.append((p.parent.name, res))
    return out


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.1f}"


def _results_section(label: str, res: Dict[str, Any]) -> List[str]:
    lines = [f"### {res.get('suite') or label} (`{label}/results.json`)", "",
             "| task | split | n | metric | score | 95% CI | chance | majority |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for name, r in res["tasks"].items():
        m = r.get("metric", "")
        ci = r.get("ci95")
        lines.append(f"| {name} | {r.get('split', '')} | {r.get('n', '')} | {m} | {_pct(r.get(m))} | "
                     f"{_pct(ci[0]) + '-' + _pct(ci[1]) if ci else '-'} | {_pct(r.get('chance'))} | "
                     f"{_pct(r.get('majority'))} |")
    for split, s in (res.get("splits") or {}).items():
        ci = s.get("ci95")
        lines.append(f"| **mean {split}** | {split} | | mean | {_pct(s.get('mean'))} | "
                     f"{_pct(ci[0]) + '-' + _pct(ci[1]) if ci else '-'} | {_pct(s.get('chance'))} | "
                     f"{_pct(s.get('majority'))} |")
    lines += ["", "Scores, chance (1 / #candidates) and majority (the best constant answer) in %. "
              + (res.get("ci_method") or ""), ""]
    return lines


def model_card(checkpoint: str | os.PathLike, fmt: str, eval_results: Sequence[str | os.PathLike] = ()) -> str:
    """The ``README.md`` text for an export of ``checkpoint`` (an mmit checkpoint folder) in format
    ``fmt`` (module docstring). Raises ``FileNotFoundError`` for a named ``eval_results`` without
    ``results.json``."""
    from mmit import __version__

    ckpt = Path(checkpoint)
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")) if (ckpt / "config.yaml").is_file() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    model, data, train = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("train") or {}
    state = {}
    if (ckpt / "trainer_state.json").is_file():
        try:
            state = json.loads((ckpt / "trainer_state.json").read_text())
        except ValueError:
            state = {}
    family = cfg.get("family", "unknown")
    bases = _base_models(model)
    hub = [n for _, n in bases if "/" in n and not is_local_path(n)]
    front = ["---", "library_name: " + ("diffusers" if fmt.startswith("diffusers") else "transformers"),
             "tags:", "- mmit", f"- {family}", f"- {fmt}"]
    if hub:
        front += ["base_model:"] + [f"- {n}" for n in hub]
    front += ["---", ""]
    where = f"{ckpt.parent.name + '/' if ckpt.name == 'final' else ''}{ckpt.name}"
    lines = [f"# {family} model exported by mmit ({fmt})", "",
             f"Exported with mmit {__version__} (`mmit export --format {fmt}`) from the checkpoint `{where}`.", "",
             "## Base models and components", ""]
    lines += ([f"- {comp}: `{public_name(n) or Path(n).name + ' (local folder)'}`" for comp, n in bases]
              or ["- (not recorded)"])
    template = model.get("template")
    lines += ["", "## Conversation template", "",
              f"`{template}` (also saved as the tokenizer's chat template where the format has one)" if template
              else "(none)", "", "## Training data", ""]
    dpath = data.get("path")
    lines.append(f"- format `{data.get('format', '?')}`, read from `{Path(str(dpath)).name if dpath else '?'}`")
    if state.get("skipped"):
        lines.append("- samples skipped while training: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(state["skipped"].items())))
    lines += ["", "## Training", "", f"- stage: `{train.get('stage', '?')}`"]
    for k in ("max_steps", "epochs", "batch_size", "gradient_accumulation_steps", "lr", "lr_scheduler", "precision",
              "seed"):
        if k in train:
            lines.append(f"- {k}: {train[k]}")
    if (train.get("lora") or {}).get("enabled"):
        lines.append(f"- LoRA r={train['lora'].get('r')} alpha={train['lora'].get('alpha')} (merged into the weights)")
    for k in ("step", "tokens_seen"):
        if k in state:
            lines.append(f"- {k.replace('_', ' ')} at export: {state[k]}")
    lines += ["", "## Evaluation", ""]
    found = _find_results(ckpt, eval_results)
    if not found:
        lines += ["No `mmit eval` results were found beside this checkpoint "
                  "(`mmit export --eval DIR` adds those of `mmit eval --output DIR`).", ""]
    for label, res in found:
        lines += _results_section(label, res)
    return "\n".join(front + lines).rstrip() + "\n"


def finish_export(checkpoint: str | os.PathLike, output: str | os.PathLike, fmt: str,
                  eval_results: Sequence[str | os.PathLike] = ()) -> Path:
    """Write the model card, scrub local paths from the folder's configs and normalise its file
    modes (module docstring). ``checkpoint``: the mmit checkpoint or run folder exported.
    Returns ``output``."""
    from mmit.training.checkpoint import resolve_checkpoint_dir

    ckpt = resolve_checkpoint_dir(checkpoint)
    out = Path(output)
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")) if (ckpt / "config.yaml").is_file() else {}
    known = [n for _, n in _base_models((cfg or {}).get("model") or {}) if not is_local_path(n)]
    scrub_json_paths(out, known)
    for y in out.rglob("config.yaml"):
        scrub_config_yaml(y)
    (out / CARD).write_text(model_card(ckpt, fmt, eval_results), encoding="utf-8")
    normalize_modes(out)
    return out
