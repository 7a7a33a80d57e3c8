"""Write the procedural suite as webdataset shards (``python -m mmit.evaluation.procedural``).

Two kinds of output, both deterministic functions of ``--seed`` (byte-identical tars):

Every task's answers are balanced over its options (each option ``n // k`` or ``n // k + 1`` times,
:func:`~.tasks.balanced_answers`), in both kinds: the eval's chance level is then also what a
constant answer scores, and training does not teach a label prior.

* ``--kind train``: the chosen tasks' samples, interleaved in a seeded random order, each
  instruction drawn at random from the task's 5 templates (as MultiInstruct builds its training
  set, arXiv 2212.10573), optionally mixed with other shards (``--mix demo_out/shards:20`` adds
  every sample of those shards 20 times: the bundled real data). One folder of
  ``00000.tar ...`` + ``_stats.json``, ready for ``data.path``.
* ``--kind eval``: one folder per task (``<output>/<task>/00000.tar``) whose samples follow the
  eval sample convention (``mmit.evaluation.data``); the task YAMLs in
  ``configs/eval/procedural/`` re-render each with all 5 templates.

Use different seeds for training and evaluation data (the Makefile uses 0 and 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Iterator, List, Optional, Sequence, Tuple

from mmit.data.sample import Media, Sample, Turn
from mmit.data.shards import ShardWriter, dump_json
from mmit.evaluation.procedural.scenes import png_bytes, render
from mmit.evaluation.procedural.tasks import TASKS, ProceduralTask, balanced_answers, tasks_of_split

SOURCE = "procedural"


#: Procedural samples carry this system turn: empty, so the conversation template renders no system
#: prompt (vicuna-v1's default is ~40 tokens, more than the question and answer together). Training
#: and eval samples carry the same one, so prompts match; the eval keeps a sample's system turn.
SYSTEM = ""


def make_sample(task: ProceduralTask, rng: random.Random, index: int, template: Optional[int] = None,
                answer: Optional[str] = None) -> Sample:
    """One sample of ``task``: a rendered scene, the question with template ``template`` (random
    when None), the answer (drawn from the task's generator, or forced to ``answer`` by rejection
    sampling: :meth:`~.tasks.ProceduralTask.make_with_answer`); ``meta`` holds ``options``, ``label``,
    ``answers``, ``fields``, ``template`` and the scene's objects (ground truth). Turns: system
    :data:`SYSTEM`, user, assistant."""
    scene, fields, answer = task.make(rng) if answer is None else task.make_with_answer(rng, answer)
    img = render(scene, rng)
    t = rng.randrange(len(task.templates)) if template is None else template
    question = task.templates[t].format(**fields)
    meta = {"options": list(task.options), "label": answer, "answers": [answer], "fields": fields,
            "template": t, "split": task.split,
            "objects": [{"shape": o.shape, "color": o.color, "position": o.position} for o in scene.objects]}
    return Sample(id=f"{task.name}-{index:06d}", turns=[Turn("system", SYSTEM), Turn("user", f"<image>\n{question}"),
                                                Turn("assistant", answer)],
                  media=[Media("image", path=f"{task.name}-{index:06d}.png", data=png_bytes(img), ext="png",
                               meta={"width": img.width, "height": img.height})],
                  task=task.name, source=SOURCE, meta=meta)


def task_samples(task: ProceduralTask, n: int, seed: int, balanced: bool = True) -> Iterator[Sample]:
    """``n`` samples of ``task`` from a generator seeded by ``(seed, task name)``. ``balanced``
    (default): the answers are dealt evenly over the task's options
    (:func:`~.tasks.balanced_answers`, so a constant answer scores chance); else each answer is
    whatever the task's generator draws (skewed for e.g. ``color-count``)."""
    rng = random.Random(f"mmit-procedural/{seed}/{task.name}")
    answers = balanced_answers(task, n, random.Random(f"mmit-procedural-answers/{seed}/{task.name}")) \
        if balanced else [None] * n
    for i in range(n):
        yield make_sample(task, rng, i, answer=answers[i])


def _write_folder(samples: Sequence[Sample], output: str, shard_size: int, fmt: str) -> dict:
    os.makedirs(output, exist_ok=True)
    for name in os.listdir(output):
        if name.endswith(".tar") or name.endswith("_stats.json"):
            os.remove(os.path.join(output, name))
    shards = []
    for k in range(0, max(len(samples), 1), shard_size):
        with ShardWriter(os.path.join(output, f"{k // shard_size:05d}.tar")) as w:
            for j, s in enumerate(samples[k:k + shard_size]):
                w.write(s, k + j)
            shards.append(w.finish())
    stats = {"format": fmt, "input": "generated", "records_in": len(samples), "written": len(samples),
             "skipped": {}, "shards": len(shards)}
    with open(os.path.join(output, "_stats.json"), "wb") as f:
        f.write(dump_json(stats))
    return stats


def _parse_mix(spec: str) -> Tuple[str, int]:
    path, _, rep = spec.rpartition(":") if ":" in spec else (spec, "", "1")
    try:
        n = int(rep)
    except ValueError:
        raise ValueError(f"--mix {spec!r}: expected PATH or PATH:REPEATS") from None
    if n < 1:
        raise ValueError(f"--mix {spec!r}: repeats must be >= 1")
    return path, n


def build_train(output: str, tasks: List[ProceduralTask], n_per_task: int, seed: int,
                mix: Sequence[str] = (), shard_size: int = 1000) -> dict:
    """Training shards: ``n_per_task`` samples per task plus the ``mix`` shards' samples, shuffled
    with ``seed``. Returns the ``_stats.json`` dict (``written`` = samples, ``mixed`` = from mix)."""
    from mmit.data.shards import iter_shards

    samples: List[Sample] = [s for t in tasks for s in task_samples(t, n_per_task, seed)]
    mixed = 0
    for spec in mix:
        path, rep = _parse_mix(spec)
        real = list(iter_shards(path, shuffle_buffer=0, split_by_node=False, split_by_worker=False))
        for r in range(rep):
            for s in real:
                samples.append(Sample(id=f"{s.id}#{r}" if r else s.id, turns=s.turns, media=s.media,
                                      task=s.task, source=s.source, meta=s.meta))
        mixed += rep * len(real)
    random.Random(f"mmit-procedural-order/{seed}").shuffle(samples)
    stats = _write_folder(samples, output, shard_size, "procedural-train")
    stats["mixed"] = mixed
    return stats


def build_eval(output: str, tasks: List[ProceduralTask], n_per_task: int, seed: int,
               shard_size: int = 1000) -> dict:
    """One shard folder per task under ``output``. Returns ``{task: written}``."""
    out = {}
    for t in tasks:
        samples = list(task_samples(t, n_per_task, seed))
        out[t.name] = _write_folder(samples, os.path.join(output, t.name), shard_size, "procedural-eval")["written"]
    return out


def task_yaml(task: ProceduralTask, data_root: str) -> str:
    """The eval task YAML of ``task`` (what ``configs/eval/procedural/*.yaml`` hold)."""
    lines = [f"# Procedural task '{task.name}' ({task.split}; skills: {', '.join(task.skills)}).",
             "# Generated by `python -m mmit.evaluation.procedural --write-configs`; keep in sync with",
             "# mmit/evaluation/procedural/tasks.py (tests/test_eval_procedural.py checks it).",
             f"name: {task.name}", f"split: {task.split}",
             f"description: procedural scenes, {' + '.join(task.skills)}",
             "data:", "  format: shards", f"  path: {data_root}/{task.name}", "templates:"]
    lines += [f"  - {json.dumps(t)}" for t in task.templates]
    lines += ["output: rank", "rank:", "  reduction: sum", "metrics: [mc-accuracy]", "postprocess: strip",
              f"chance: {task.chance:.4f}"]
    return "\n".join(lines) + "\n"


def write_configs(config_dir: str, data_root: str) -> List[str]:
    """Write one task YAML per procedural task and the suite ``procedural.yaml`` beside the folder."""
    sub = os.path.join(config_dir, "procedural")
    os.makedirs(sub, exist_ok=True)
    names = []
    for t in TASKS.values():
        with open(os.path.join(sub, f"{t.name}.yaml"), "w") as f:
            f.write(task_yaml(t, data_root))
        names.append(f"procedural/{t.name}.yaml")
    return names


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmit.evaluation.procedural",
                                description="Write the procedural instruction suite as webdataset shards.")
    p.add_argument("--output", help="output folder")
    p.add_argument("--kind", choices=("train", "eval"), default="eval")
    p.add_argument("--split", choices=("held-in", "held-out", "all"), default="all")
    p.add_argument("--n-per-task", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mix", action="append", default=[], help="PATH[:REPEATS] of shards mixed into --kind train")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--write-configs", metavar="CONFIG_DIR",
                   help="write the task YAMLs into CONFIG_DIR/procedural/ (data under --data-root)")
    p.add_argument("--data-root", default="demo_out/procedural_eval")
    a = p.parse_args(argv)
    if a.write_configs:
        for n in write_configs(a.write_configs, a.data_root):
            print(n)
        return 0
    if not a.output:
        p.error("--output is required")
    tasks = tasks_of_split(a.split)
    if a.kind == "train":
        stats = build_train(a.output, tasks, a.n_per_task, a.seed, a.mix, a.shard_size)
        print(f"wrote {stats['written']} training samples ({stats['mixed']} mixed in from {a.mix or 'nothing'}) "
              f"to {a.output} ({', '.join(t.name for t in tasks)})")
    else:
        counts = build_eval(a.output, tasks, a.n_per_task, a.seed, a.shard_size)
        print(f"wrote eval shards to {a.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
