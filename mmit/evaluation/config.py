"""Eval task and suite configuration (YAML read as data, then draccus; unknown keys are errors naming the file).

A *task* file (``configs/eval/**/<task>.yaml``) says where the samples are, how each prompt is
written (one or more instruction templates), how the model answers (``generate`` free text or
``rank`` the candidate answers, InstructBLIP's vocabulary ranking, arXiv 2305.06500 §2.5), how
answers are post-processed and scored, and whether the task is ``held-in`` or ``held-out``::

    name: vsr
    split: held-out
    data: {format: heldout-vsr, path: /data/vsr/test.jsonl, media_root: /data/coco}
    templates: ["{question} Answer yes or no."]
    output: rank
    rank: {reduction: sum, candidates: ["yes", "no"]}
    metrics: [mc-accuracy]

k-shot in-context evaluation (OpenFlamingo, arXiv 2308.01390): ``shots: [0, 4, 8]`` scores every
sample once per k with k demonstrations (seeded by ``shot_seed``) from ``demonstrations`` (a data
section; default: the task's own data, the evaluated sample excluded); see
:mod:`mmit.evaluation.incontext`.

A *suite* file lists task files (paths relative to the suite file) and run-wide settings::

    name: procedural
    tasks: [procedural/object_color.yaml, procedural/count_color.yaml]
    batch_size: 16
    shots: [0, 4, 8]          # optional: replaces every task's own shots

Data paths inside a task are relative to the working directory (as in training configs).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

SPLITS = ("held-in", "held-out")
OUTPUTS = ("generate", "rank")
REDUCTIONS = ("sum", "mean")
#: Readers that can re-render a sample with each of its task's own instruction templates.
SOURCE_TEMPLATE_FORMATS = ("multiinstruct",)
#: ``TaskConfig.shots`` default: zero-shot only (results as before in-context evaluation existed).
DEFAULT_SHOTS = (0,)


@dataclass
class EvalDataConfig:
    #: ``shards`` (webdataset tars: folder, glob or brace pattern) or a reader name from
    #: ``mmit.data.sources.FORMATS`` (``heldout-vsr``, ``heldout-scienceqa``, ``llava``, ...).
    format: str = "shards"
    #: Shard folder / pattern, or the annotation file of a source format.
    path: str = ""
    #: Folder relative media paths resolve against (source formats only).
    media_root: Optional[str] = None
    #: Source formats: also read media outside ``media_root`` (absolute paths, ``..``, symlinks
    #: leading out, e.g. a folder of links to clips elsewhere); otherwise those samples are counted
    #: ``media-outside-root`` skips (the readers' ``allow_absolute``).
    allow_absolute_media: bool = False
    #: Unreadable or missing media: ``skip`` (counted in results.json) or ``error``.
    missing_media: str = "skip"
    #: Keep only samples whose ``Sample.task`` is listed (one file holding several tasks, e.g.
    #: MultiInstruct's ``test.jsonl``); empty: all. Samples of other tasks are not counted.
    tasks: List[str] = field(default_factory=list)


@dataclass
class GenerateConfig:
    #: New tokens at most (the answer; eos / the template's stop tokens end it earlier).
    max_new_tokens: int = 32
    #: 1 = greedy; > 1 = beam search (InstructBLIP uses 5 for captioning and open-ended VQA).
    num_beams: int = 1
    #: Beam-search length penalty (transformers' ``length_penalty``; exponent on the length).
    length_penalty: float = 1.0


@dataclass
class RankConfig:
    #: ``sum`` (total log-likelihood of the candidate's tokens, as LAVIS ``predict_class``) or
    #: ``mean`` (per token, length-normalised).
    reduction: str = "sum"
    #: The same candidates for every sample (e.g. ``[yes, no]``); empty: each sample's
    #: ``meta["options"]``.
    candidates: List[str] = field(default_factory=list)
    #: Also score the template's end-of-turn tokens (e.g. ``</s>``) after the candidate. Off as in
    #: InstructBLIP; on, a candidate that is a prefix of another no longer wins by being shorter.
    score_end_of_turn: bool = False
    #: Candidate rows (sample x candidate) scored per forward pass over the cached prefix; more
    #: rows are split into chunks (bounds memory for e.g. Visual Dialog's 100 candidates).
    max_rows: int = 512


@dataclass
class TaskConfig:
    #: Task name: the key in results.json and predictions.jsonl.
    name: str = ""
    #: ``held-in`` (the task, not its eval samples, was seen in training) or ``held-out``.
    split: str = "held-out"
    description: str = ""
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    #: Instruction templates: Python format strings over the sample's prompt fields
    #: (``meta["fields"]`` plus ``question``, ``options``, ``lettered_options``). Every sample is
    #: scored once per template (MultiInstruct: 5 per task, arXiv 2212.10773). Empty: the sample's
    #: own user turn, as stored. ``<image>\n`` is put first when the template has no ``<image>``.
    templates: List[str] = field(default_factory=list)
    #: Score every sample once per instruction template its READER provides (``multiinstruct``:
    #: the task's expert-written templates, re-rendered with ``rerender``) instead of ``templates``.
    source_templates: bool = False
    #: ``generate`` (free text, then post-processing and metrics) or ``rank`` (vocabulary ranking).
    output: str = "generate"
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    #: Metric names (``mmit.evaluation.metrics.METRICS``); the first is the task's headline figure.
    metrics: List[str] = field(default_factory=lambda: ["exact-match"])
    #: Answer post-processing (``mmit.evaluation.postprocess.POSTPROCESS``) of generated text.
    postprocess: str = "strip"
    #: Chance level of the headline metric; None: 1 / #candidates averaged over samples for
    #: ``rank`` tasks scored by accuracy, unknown otherwise.
    chance: Optional[float] = None
    #: Score at most this many samples (the first ones in stored order); None: all.
    max_samples: Optional[int] = None
    #: In-context demonstrations per prompt, one evaluation per entry (OpenFlamingo reports 0, 4, 8,
    #: ..., arXiv 2308.01390). The first entry is the task's headline figure; ``[0]``: zero-shot.
    shots: List[int] = field(default_factory=lambda: list(DEFAULT_SHOTS))
    #: Where demonstrations are drawn from (a data section like ``data``); None: the task's own
    #: ``data``, read in full (not capped by ``max_samples``), the evaluated sample excluded.
    demonstrations: Optional[EvalDataConfig] = None
    #: Seed of the demonstration draw; each (task, sample id, k, seed) draws the same demonstrations.
    shot_seed: int = 0


#: In-context fields and their defaults: left out of :func:`config_hash` at these values.
_INCONTEXT_DEFAULTS = {"shots": list(DEFAULT_SHOTS), "demonstrations": None, "shot_seed": 0}


def is_incontext(task: TaskConfig) -> bool:
    """True when ``task`` asks for anything but zero-shot only (``shots != [0]``)."""
    return list(task.shots) != list(DEFAULT_SHOTS)


@dataclass
class SuiteConfig:
    name: str = "suite"
    #: Task YAML files, relative to the suite file.
    tasks: List[str] = field(default_factory=list)
    #: Samples per forward pass (prompts for ``generate``; prompts, each with all its candidates,
    #: for ``rank``).
    batch_size: int = 8
    #: Cap for every task (overrides a task's own ``max_samples`` when smaller); None: no cap.
    max_samples: Optional[int] = None
    #: Bar chart file name in the output folder ('' for none).
    plot: str = "heldin_vs_heldout.png"
    #: Replaces every task's ``shots`` (e.g. ``--shots=[0,4,8]`` on the command line); None: keep them.
    shots: Optional[List[int]] = None
    #: Replaces every task's ``shot_seed``; None: keep them.
    shot_seed: Optional[int] = None


def _parse(cls, path: Optional[str], args: Sequence[str] = ()):
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"eval config not found: {path}")
    from mmit.config.schema import parse_dataclass

    try:  # YAML read as data (safe loader, no python tags), as run configs
        return parse_dataclass(cls, path, args, what="this eval config")
    except ValueError as e:
        raise ValueError(str(e) if path else f"command line: {e}") from None


def validate_task(task: TaskConfig, path: str) -> TaskConfig:
    """Check the values draccus cannot; raises ``ValueError`` naming ``path`` and the field."""
    def bad(msg: str):
        raise ValueError(f"{path}: {msg}")

    if not task.name:
        bad("'name' is required")
    if task.split not in SPLITS:
        bad(f"split must be one of {', '.join(SPLITS)}, not {task.split!r}")
    if task.output not in OUTPUTS:
        bad(f"output must be one of {', '.join(OUTPUTS)}, not {task.output!r}")
    if task.rank.reduction not in REDUCTIONS:
        bad(f"rank.reduction must be one of {', '.join(REDUCTIONS)}, not {task.rank.reduction!r}")
    if task.source_templates and task.templates:
        bad("give either templates or source_templates: true, not both")
    if task.source_templates and task.data.format not in SOURCE_TEMPLATE_FORMATS:
        bad(f"source_templates: true needs data.format {' or '.join(SOURCE_TEMPLATE_FORMATS)}, "
            f"not {task.data.format!r}")
    if task.rank.max_rows < 1:
        bad(f"rank.max_rows must be >= 1, got {task.rank.max_rows}")
    if not task.data.path:
        bad("data.path is required")
    if task.data.missing_media not in ("skip", "error"):
        bad(f"data.missing_media must be skip or error, not {task.data.missing_media!r}")
    if not task.metrics:
        bad("at least one metric is required")
    if task.generate.max_new_tokens < 1 or task.generate.num_beams < 1:
        bad("generate.max_new_tokens and generate.num_beams must be >= 1")
    if task.max_samples is not None and task.max_samples < 1:
        bad(f"max_samples must be >= 1, got {task.max_samples}")
    validate_shots(task.shots, path)
    if isinstance(task.shot_seed, bool) or not isinstance(task.shot_seed, int):
        bad(f"shot_seed must be an integer, not {task.shot_seed!r}")
    d = task.demonstrations
    if d is not None:
        if not d.path:
            bad("demonstrations.path is required when demonstrations is given (leave demonstrations out "
                "to draw them from the task's own data)")
        if d.missing_media not in ("skip", "error"):
            bad(f"demonstrations.missing_media must be skip or error, not {d.missing_media!r}")
    for i, t in enumerate(task.templates):
        try:
            t.format_map(_AnyFields())
        except (ValueError, IndexError) as e:
            bad(f"templates[{i}] {t!r} is not a valid format string: {e}")
    from mmit.evaluation.metrics import get_metric
    from mmit.evaluation.postprocess import get_postprocess

    for m in task.metrics:
        try:
            get_metric(m)
        except KeyError as e:
            bad(f"metrics: {e}")
    try:
        get_postprocess(task.postprocess)
    except KeyError as e:
        bad(f"postprocess: {e}")
    return task


def validate_shots(shots, path: str, key: str = "shots") -> None:
    """``shots``: a non-empty list of distinct integers >= 0. Raises ``ValueError`` naming ``path``."""
    if not shots:
        raise ValueError(f"{path}: {key} must list at least one k (e.g. [0] or [0, 4, 8])")
    for i, k in enumerate(shots):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"{path}: {key}[{i}] must be an integer >= 0, got {k!r}")
    if len(set(shots)) != len(shots):
        raise ValueError(f"{path}: {key} lists a k twice: {list(shots)}")


class _AnyFields(dict):
    def __missing__(self, key):
        return ""


def _check_yaml_booleans(path: str) -> None:
    """YAML 1.1 reads unquoted yes/no/on/off as booleans, which a ``List[str]`` would silently turn
    into "True"/"False": refuse them in the string lists where answers live."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    lists = {"rank.candidates": (doc.get("rank") or {}).get("candidates") if isinstance(doc.get("rank"), dict) else None,
             "templates": doc.get("templates"), "metrics": doc.get("metrics"),
             "shots": doc.get("shots") if isinstance(doc.get("shots"), list) else None}
    for key, vals in lists.items():
        for i, v in enumerate(vals or []):
            if isinstance(v, bool):
                hint = "k must be an integer >= 0" if key == "shots" else "quote it, e.g. \"yes\""
                raise ValueError(f"{path}: {key}[{i}] reads as the boolean {v} (YAML turns unquoted yes/no/on/off "
                                 f"into booleans); {hint}")


def load_task(path: str, args: Sequence[str] = ()) -> TaskConfig:
    """Read and check one task file. Raises ``FileNotFoundError`` / ``ValueError`` naming the file."""
    task = _parse(TaskConfig, path, args)
    _check_yaml_booleans(path)
    return validate_task(task, path)


def is_suite_file(path: str) -> bool:
    """True when the YAML file has a top-level ``tasks`` key (a suite), False for a single task."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"eval config not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return "tasks" in doc


def load_suite(path: str, args: Sequence[str] = ()) -> Tuple[SuiteConfig, List[Tuple[str, TaskConfig]]]:
    """Read a suite file (or a single task file, run as a one-task suite) and its tasks.

    ``args`` are draccus overrides of the suite (``--batch_size=4``, ``--max_samples=20``).
    Returns ``(suite, [(task file, TaskConfig), ...])``. Raises ``ValueError`` naming the file for
    unknown keys, bad values, duplicate task names or an empty suite; ``FileNotFoundError`` for a
    missing file.
    """
    if not is_suite_file(path):
        suite = _parse(SuiteConfig, None, args)
        task = load_task(path)
        suite.name = task.name
        tasks = [(path, task)]
    else:
        suite = _parse(SuiteConfig, path, args)
        if not suite.tasks:
            raise ValueError(f"{path}: 'tasks' lists no task file")
        base = Path(path).parent
        tasks = []
        for rel in suite.tasks:
            p = rel if os.path.isabs(rel) else str(base / rel)
            tasks.append((p, load_task(p)))
    if suite.batch_size < 1:
        raise ValueError(f"{path}: batch_size must be >= 1, got {suite.batch_size}")
    if suite.shots is not None:
        validate_shots(suite.shots, path)
        for _, t in tasks:
            t.shots = list(suite.shots)
    if suite.shot_seed is not None:
        if isinstance(suite.shot_seed, bool) or not isinstance(suite.shot_seed, int):
            raise ValueError(f"{path}: shot_seed must be an integer, not {suite.shot_seed!r}")
        for _, t in tasks:
            t.shot_seed = suite.shot_seed
    seen = {}
    for p, t in tasks:
        if t.name in seen:
            raise ValueError(f"{path}: task name {t.name!r} appears twice ({seen[t.name]} and {p})")
        seen[t.name] = p
    return suite, tasks


def _hashed_task(task: TaskConfig) -> dict:
    d = asdict(task)
    for k, default in _INCONTEXT_DEFAULTS.items():
        if d.get(k) == default:
            del d[k]
    return d


def config_hash(suite: SuiteConfig, tasks: Sequence[Tuple[str, TaskConfig]]) -> str:
    """sha256 (hex, first 16 chars) of the resolved suite and task configs: two runs with the same
    hash scored the same tasks the same way (file locations do not enter it). In-context fields at
    their defaults (zero-shot) are left out, so zero-shot configs hash as before they existed; the
    suite's ``shots`` / ``shot_seed`` enter through the tasks they were copied into."""
    blob = json.dumps({"suite": {k: v for k, v in asdict(suite).items() if k not in ("tasks", "shots", "shot_seed")},
                       "tasks": [_hashed_task(t) for _, t in tasks]}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def task_to_dict(task: TaskConfig) -> dict:
    return asdict(task)
