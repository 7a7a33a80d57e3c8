"""MultiInstruct's instruction templates (VT-NLP/MultiInstruct @ 772af24,
``instruction_templates.py``; arXiv 2212.10773): the task table and its train / unseen splits,
rendering a record's prompt with template ``i`` (:func:`render_instruction`), finding which
template a released prompt was written with (:func:`match_template`) and re-rendering a sample with
another template for the sensitivity metric (:func:`rerender`). The reader is
:mod:`mmit.data.sources.multiinstruct`.
"""

from __future__ import annotations

import difflib
import functools
import json
import string
from importlib import resources
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from mmit.data.normalize import place_image_placeholders
from mmit.data.sample import Sample, Turn

_SPLIT = "||||"
_OPTIONS = "\n\n[Options]: "


@functools.lru_cache(maxsize=1)
def _table() -> Dict[str, Any]:
    text = resources.files("mmit.data.sources").joinpath("multiinstruct_tasks.json").read_text(
        encoding="utf-8")
    return json.loads(text)


def training_tasks() -> List[str]:
    """The 53 training tasks of the paper (9 task groups), as named in ``build_instruction``."""
    return list(_table()["splits"]["train"])


def unseen_tasks() -> List[str]:
    """The held-out evaluation tasks: the paper's 9 unseen tasks (commonsense VQA, visual
    entailment, visual spatial reasoning, NLVR, text VQA, grounded VQA, visual text extraction,
    visual dialogue, disaster-type classification), with MEDIC's two extra variants
    (``medic_damage_severity``, ``medic_informative``) that ``test.jsonl`` also holds: 11 names."""
    return list(_table()["splits"]["unseen"])


def task_split(task: str) -> Optional[str]:
    """``"train"`` for a training task, ``"unseen"`` for a held-out one, None for anything else
    (e.g. the image-generation tasks ``build_dataset.py`` skips)."""
    return _split_of().get(task)


@functools.lru_cache(maxsize=1)
def _split_of() -> Dict[str, str]:
    """Task name -> ``"train"`` / ``"unseen"`` (a training task named in both lists stays train)."""
    splits = _table()["splits"]
    return {**{t: "unseen" for t in splits["unseen"]}, **{t: "train" for t in splits["train"]}}


def instruction_templates(task: str) -> List[str]:
    """The expert-written instruction templates of ``task``, in the original order (index =
    ``template_id``). They are ``str.format`` strings whose fields :func:`render_instruction`
    fills (listed in ``multiinstruct_tasks.json["fields"]``).

    Raises ``KeyError`` naming close task names for an unknown task.
    """
    templates = _table()["templates"]
    if task not in templates:
        close = difflib.get_close_matches(task, list(templates), n=3)
        raise KeyError(f"unknown MultiInstruct task {task!r}"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))
    return list(templates[task])


def _join(items: Any) -> str:
    return _SPLIT.join(str(x) for x in items) if isinstance(items, list) else str(items)


def _template_fields(task: str, record: Mapping[str, Any]) -> Dict[str, Any]:
    """Every field a template of ``task`` may name, from ``record`` (absent ones left out).
    Raises ``TypeError`` (``meta_data`` not an object) and what a malformed ``region``, ``context``
    (``wikihow_next_step``), region map (``commonsense_VQA``) or dialog history
    (``visual_dialog``) raises."""
    fields = _Fields.of(task, record)
    for name in _LAZY:
        try:
            fields[name]
        except KeyError:
            pass
    return dict(fields)


class _Fields(dict):
    """A record's template fields for ``str.format_map``, made when a template names them: one
    rendering needs two or three of them. What can fail on a malformed record is worked out in
    :meth:`of` (and raises there, failing every template, as when all fields were made up front).
    A field the record lacks (None) is a ``KeyError``, as a missing ``format`` argument."""

    __slots__ = ("record", "md", "regs", "region")

    @classmethod
    def of(cls, task: str, record: Mapping[str, Any]) -> "_Fields":
        md = record.get("meta_data") or {}
        if not isinstance(md, dict):
            raise TypeError(f"'meta_data' must be an object, got {type(md).__name__}")
        regs = md.get("object_regions") or {}
        region = list(record.get("region") or [])
        fields = cls(_task_fields(task, record, md, regs) if task in _TASK_FIELDS else ())
        fields["region"] = region
        fields.record, fields.md, fields.region = record, md, region
        fields.regs = regs if isinstance(regs, dict) else {}
        return fields

    def __missing__(self, name: str) -> Any:
        make = _LAZY.get(name)
        value = make(self) if make is not None else None
        if value is None:
            raise KeyError(name)
        self[name] = value
        return value


def _regions_of(key: str) -> Callable[[_Fields], Optional[str]]:
    """The maker of field ``{key}_regions`` style fields: ``meta_data.object_regions[key]`` joined."""
    return lambda f: _join(f.regs[key]) if key in f.regs else None


#: The fields that cannot fail, made when a template names them.
_LAZY = {
    "question": lambda f: f.record.get("question"), "text": lambda f: f.record.get("text"),
    "context": lambda f: f.record.get("context"), "answer": lambda f: f.record.get("answer"),
    "options": lambda f: _join(f.record.get("options") or []), "regions": lambda f: _join(f.region),
    "relation": lambda f: f.md.get("relation"), "method": lambda f: f.md.get("method"),
    "subject_regions": _regions_of("subject"), "object_regions": _regions_of("object"),
    "given_region": _regions_of("given_region"),
}
#: Tasks with fields of their own, made up front (they fail on malformed records).
_TASK_FIELDS = frozenset(["wikihow_next_step", "commonsense_VQA", "visual_dialog"])


def _task_fields(task: str, record: Mapping[str, Any], md: Dict[str, Any], regs: Any
                 ) -> Dict[str, Any]:
    """The fields only some tasks' templates name (``steps``, ``region_info``, the dialog
    history), as ``build_instruction`` makes them; raises on the malformed records it fails on."""
    fields: Dict[str, Any] = {}
    if task == "wikihow_next_step":
        ctx = record.get("context") or []
        fields["steps"] = "\n".join(ctx) if len(ctx) > 0 else '"nothing"'
    if task == "commonsense_VQA" and isinstance(regs, dict):
        # Only templates 0 and 1 name the regions ({region_info}). build_instruction also has an
        # ``instruction_id >= 2`` branch that rewrites "person 1" in the question as "the person 1
        # in x1 y1 x2 y2", but build_dataset.py never passes instruction_id (default -1), so no
        # released prompt has it: the question is used as written for every template.
        fields["region_info"] = " ".join(f"{k} is in {v[0]}." for k, v in regs.items())
    if task == "visual_dialog":
        hist = [f"{t['q']}, {t['a']};" for t in md.get("dialog_hist") or []]
        fields["dialog_history"] = " ".join(hist)
        fields["last_dialog_turn"] = hist[-1] if hist else ""
    return fields


def render_instruction(record: Mapping[str, Any], template_id: int,
                       task: Optional[str] = None) -> str:
    """The prompt ``build_instruction`` would write for ``record`` with template ``template_id``.

    Source: VT-NLP/MultiInstruct @ 772af24 ``instruction_templates.py::build_instruction`` as
    ``build_dataset.py`` calls it (no ``instruction_id``; arXiv 2212.10773), options in the given
    order. ``commonsense_VQA`` questions are therefore never rewritten with coordinates.

    Args:
        record: a MultiInstruct record (or a :class:`Sample`'s ``meta`` plus ``task_name``):
            ``question``, ``text``, ``context``, ``options`` (list, rendered in the given order),
            ``region`` (list of ``"x1 y1 x2 y2"`` strings), ``meta_data`` as the task needs.
        template_id: 0-based index into :func:`instruction_templates`.
        task: defaults to ``record["task_name"]``.

    Returns the instruction text (without ``<image>``). Raises ``KeyError`` (unknown task),
    ``IndexError`` (no such template) or ``ValueError`` naming the field the template needs but
    the record lacks.
    """
    task = task or record.get("task_name")
    key = task
    md = record.get("meta_data")
    if task == "visual_dialog" and not (isinstance(md, dict) and md.get("dialog_hist")):
        key = "visual_dialog:no_history"
    templates = instruction_templates(key)
    if not 0 <= template_id < len(templates):
        raise IndexError(f"task {task!r} has {len(templates)} templates; no template_id "
                         f"{template_id}")
    try:
        fields = _template_fields(task, record)
        return templates[template_id].format(**fields)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"task {task!r} template {template_id} needs a field the record lacks: "
                         f"{e!r}") from None


def match_template(record: Mapping[str, Any]) -> Optional[int]:
    """Index of the first template whose rendering equals ``record["prompt"]``, else None."""
    task, prompt = record.get("task_name"), record.get("prompt")
    if task not in _table()["templates"] or not isinstance(prompt, str):
        return None
    n = len(_table()["templates"][task])
    md = record.get("meta_data")  # render_instruction's choice of template list, done once
    key = ("visual_dialog:no_history" if task == "visual_dialog" and
           not (isinstance(md, dict) and md.get("dialog_hist")) else task)
    templates, prefixes = _with_prefixes(key)
    if n > len(templates):  # render_instruction's IndexError (not a ValueError): as before
        return next((i for i in range(n) if _renders_to(record, i, prompt)), None)
    fields = None
    for i in range(n):
        if not prompt.startswith(prefixes[i]):
            continue  # no rendering of this template can equal the prompt
        if fields is None:
            try:
                fields = _Fields.of(task, record)  # once, not once per template
            except (KeyError, IndexError, TypeError, AttributeError):
                return None  # render_instruction: ValueError for every template
        try:
            if templates[i].format_map(fields) == prompt:
                return i
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
    return None


@functools.lru_cache(maxsize=None)
def _with_prefixes(key: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """``(templates, literal prefixes)`` of template list ``key`` (:func:`instruction_templates`),
    worked out once per list. Raises ``KeyError`` for an unknown key."""
    templates = tuple(instruction_templates(key))
    return templates, tuple(_literal_prefix(t) for t in templates)


@functools.lru_cache(maxsize=4096)
def _literal_prefix(template: str) -> str:
    """The text every ``str.format`` rendering of ``template`` starts with: its literal text before
    the first replacement field (``{{`` read as ``{``); "" when the template does not parse (its
    ``format`` then raises as before)."""
    try:
        first = next(iter(string.Formatter().parse(template)), None)
    except ValueError:
        return ""
    return first[0] if first else ""


def _renders_to(record: Mapping[str, Any], i: int, prompt: str) -> bool:
    try:
        return render_instruction(record, i) == prompt
    except ValueError:
        return False


def rerender(sample: Sample, template_id: int) -> Sample:
    """A copy of a ``multiinstruct`` sample whose user turn uses template ``template_id``.

    The media, target, options and boxes are unchanged; ``meta["template_id"]`` is updated. Used
    to score each held-out instance under all of its task's instructions (sensitivity metric).
    Raises as :func:`render_instruction`.
    """
    record = dict(sample.meta)
    record["task_name"] = sample.task
    text = render_instruction(record, template_id)
    turns = [Turn(t.role, t.content) for t in sample.turns]
    n_img = sum(1 for m in sample.media if m.kind == "image")
    turns[0] = Turn("user", text)
    turns = place_image_placeholders(turns, n_img)
    meta = dict(sample.meta, template_id=template_id)
    return Sample(id=sample.id, turns=turns, media=list(sample.media), task=sample.task,
                  source=sample.source, meta=meta)
