"""Run an eval suite on a checkpoint: score every task, compute metrics, write the outputs.

Output folder (``mmit eval --output DIR``)::

    results.json        {"suite", "checkpoint", "config_hash", "tasks": {name: {...}}, "splits": {...}}
    predictions.jsonl   one line per (sample, template): task, id, template, prompt, prediction,
                        reference, [candidates, scores, label], [correct]
    heldin_vs_heldout.png   bar chart of every task's headline metric with its chance level
    eval_config.json    the resolved suite and task configs

``results.json["tasks"][name]``: ``split``, ``n`` (samples scored), ``n_prompts`` (samples x
templates), ``skipped`` (reason -> count; samples read = n + skipped; media the model's family does
not read, e.g. video for LLaVA, count as ``unsupported-media``: each sample's media are decoded by
``processor.decode_media``), ``metric`` (the headline
metric's name), ``chance`` (uniform chance: 1 / #candidates), ``majority`` and ``majority_answer``
(the best constant answer's headline score and that answer; None for corpus metrics), ``ci95``
(``[low, high]``, the headline figure's 95% cluster-bootstrap interval; ``results.json["ci_method"]``
says how: :mod:`mmit.evaluation.metrics.baselines`), every metric's values (``compute``'s keys), and
``per_template`` (``{"0": {metric: value}, ...}``) when the task has several templates.
``results.json["splits"][split]``: ``tasks``, ``mean`` (mean of the tasks' headline figures),
``chance``, ``majority`` (means over the tasks), ``ci95`` (of the mean: the tasks' bootstrap draws
averaged) and, where every task has >= 2 templates, ``instruction-sensitivity`` (MultiInstruct,
arXiv 2212.10773).

k-shot tasks (``shots`` other than ``[0]``; :mod:`mmit.evaluation.incontext`, OpenFlamingo arXiv
2308.01390): the task is scored once per k; ``tasks[name]["shots"][str(k)]`` holds that k's ``n``,
``n_prompts``, ``skipped``, ``chance``, ``majority``, ``ci95``, metrics, ``per_template`` and ``seconds``;
the task's own keys above are those of the FIRST entry of ``shots`` (the headline); ``tasks[name]["demonstrations"]``
describes the pool (``source``, ``path``, ``size``, ``skipped``, ``seed``). A split whose tasks all
report a k gets ``splits[split]["shots"][str(k)] = {"mean", "chance", "majority"}``. Their prediction lines add
``shots`` (k) and ``demonstrations`` (the demonstrations' sample ids, in prompt order); zero-shot-only
tasks write exactly what they wrote before.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from mmit.evaluation.config import TaskConfig, config_hash, is_incontext, load_suite, task_to_dict
from mmit.evaluation.data import EvalItem, load_items
from mmit.evaluation.scorers import best_index, generate_batch, rank_batch

log = logging.getLogger("mmit.eval")


def score_items(model, processor, task: TaskConfig, items: Sequence[EvalItem], batch_size: int,
                progress: bool = False) -> List[Dict[str, Any]]:
    """Score ``items`` of one task in batches; returns one prediction record per item (the dict
    format :mod:`mmit.evaluation.metrics.base` documents, plus ``prompt``, the query's text, and for
    a k-shot task ``shots`` and ``demonstrations``)."""
    from mmit.evaluation.postprocess import get_postprocess

    post = get_postprocess(task.postprocess)
    records = []
    memo: dict = {}  # candidate tokenization, shared by the task's batches
    incontext = is_incontext(task)
    desc = f"{task.name} ({items[0].shots}-shot)" if incontext and items else task.name
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    for k in range(0, len(items), batch_size):
        batch = items[k:k + batch_size]
        if task.output == "rank":
            outs = rank_batch(model, processor, batch, task.rank, memo)
        else:
            outs = generate_batch(model, processor, batch, task.generate)
        for it, o in zip(batch, outs):
            rec: Dict[str, Any] = {"task": task.name, "id": it.sample_id, "template": it.template,
                                   "prompt": it.prompt}
            if incontext:
                rec["shots"], rec["demonstrations"] = it.shots, list(it.demonstrations)
            if task.output == "rank":
                rec["prediction"] = it.candidates[best_index(o)]
                rec["candidates"], rec["scores"] = list(it.candidates), [float(s) for s in o]
            else:
                rec["raw_prediction"], rec["prediction"] = o[0], post(o[0])
            rec["reference"] = it.reference
            if it.label is not None:
                rec["label"] = it.label
            records.append(rec)
        bar.update(len(batch))
    bar.close()
    return records


def task_metrics(task: TaskConfig, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Every metric of ``task`` on ``records`` (plus per template); sets ``record["correct"]`` from
    the headline metric where it defines one."""
    from mmit.evaluation.metrics import get_metric

    out: Dict[str, Any] = {"metric": task.metrics[0]}
    for name in task.metrics:
        out.update(get_metric(name).compute(records))
    head = get_metric(task.metrics[0])
    for r in records:
        c = head.correct(r)
        if c is not None:
            r["correct"] = bool(c)
    templates = sorted({r["template"] for r in records})
    if len(templates) > 1:
        out["per_template"] = {}
        for t in templates:
            sub = [r for r in records if r["template"] == t]
            vals: Dict[str, float] = {}
            for name in task.metrics:
                vals.update(get_metric(name).compute(sub))
            out["per_template"][str(t)] = vals
    return out


def chance_level(task: TaskConfig, items: Sequence[EvalItem]) -> Optional[float]:
    """``task.chance``, else for a ``rank`` task scored by an accuracy the mean of 1/#candidates."""
    if task.chance is not None:
        return float(task.chance)
    accuracies = ("mc-accuracy", "exact-match", "vqa-accuracy", "vqa-accuracy-2021")
    if task.output == "rank" and items and task.metrics[0] in accuracies:
        return sum(1.0 / len(it.candidates) for it in items) / len(items)
    return None


def honest_baselines(task: TaskConfig, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """``majority`` (the best constant answer's headline score, or None), ``majority_answer`` and
    ``ci95`` (``[low, high]`` of the headline figure, or None) of one task's records
    (:mod:`mmit.evaluation.metrics.baselines`)."""
    from mmit.evaluation.metrics import get_metric
    from mmit.evaluation.metrics.baselines import bootstrap_distribution, majority_baseline, percentile_interval

    head = get_metric(task.metrics[0])
    value, answer = majority_baseline(head, records)
    return {"majority": value, "majority_answer": answer,
            "ci95": percentile_interval(bootstrap_distribution(head, records))}


def _split_baselines(names: List[str], tasks: Dict[str, Dict[str, Any]], records: List[Dict[str, Any]],
                     task_cfgs: Dict[str, TaskConfig]) -> Dict[str, Any]:
    """A split's mean ``majority`` (when every task has one) and the ``ci95`` of its mean figure:
    the tasks' bootstrap distributions (same seed and size, independent resamples per task)
    averaged draw by draw (None when a task has none or sizes differ)."""
    from mmit.evaluation.metrics import get_metric
    from mmit.evaluation.metrics.baselines import bootstrap_distribution, percentile_interval

    out: Dict[str, Any] = {}
    maj = [tasks[n].get("majority") for n in names]
    out["majority"] = sum(maj) / len(maj) if all(m is not None for m in maj) else None
    dists = [bootstrap_distribution(get_metric(task_cfgs[n].metrics[0]), [r for r in records if r["task"] == n])
             for n in names]
    ok = all(d is not None for d in dists) and len({len(d) for d in dists}) == 1
    out["ci95"] = percentile_interval(sum(dists) / len(dists)) if ok else None
    return out


def split_summary(tasks: Dict[str, Dict[str, Any]], records: List[Dict[str, Any]],
                  task_cfgs: Dict[str, TaskConfig]) -> Dict[str, Dict[str, Any]]:
    """Per split: task names, mean headline figure and chance, instruction sensitivity (from
    ``records``: the headline k's records only), and per-k means (module docstring)."""
    from mmit.evaluation.metrics import get_metric

    out: Dict[str, Dict[str, Any]] = {}
    for split in ("held-in", "held-out"):
        names = [n for n, r in tasks.items() if r["split"] == split]
        if not names:
            continue
        s: Dict[str, Any] = {"tasks": names,
                             "mean": sum(tasks[n][tasks[n]["metric"]] for n in names) / len(names)}
        chances = [tasks[n]["chance"] for n in names]
        if all(c is not None for c in chances):
            s["chance"] = sum(chances) / len(chances)
        s.update(_split_baselines(names, tasks, records, task_cfgs))
        if all(len(tasks[n].get("per_template", {})) >= 2 for n in names):
            recs = [r for r in records if r["task"] in names]
            sens = get_metric("instruction-sensitivity").compute(
                recs, metric={n: task_cfgs[n].metrics[0] for n in names})
            s["instruction-sensitivity"] = sens["instruction-sensitivity"]
        per_k = [tasks[n].get("shots") or {"0": tasks[n]} for n in names]
        if any("shots" in tasks[n] for n in names):
            s["shots"] = {}
            for k in per_k[0]:
                if all(k in pk for pk in per_k):
                    ch = [pk[k]["chance"] for pk in per_k]
                    s["shots"][k] = {"mean": sum(pk[k][pk[k]["metric"]] for pk in per_k) / len(per_k)}
                    if all(c is not None for c in ch):
                        s["shots"][k]["chance"] = sum(ch) / len(ch)
                    mj = [pk[k].get("majority") for pk in per_k]
                    s["shots"][k]["majority"] = sum(mj) / len(mj) if all(m is not None for m in mj) else None
        out[split] = s
    return out


def score_task_k(model, processor, task: TaskConfig, items: Sequence[EvalItem], n: int, skips, pool, k: int,
                 batch_size: int, progress: bool, where: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Score one task with k demonstrations per prompt (``items``, ``n``, ``skips``: the zero-shot
    items from :func:`load_items`; ``pool``: a :class:`~mmit.evaluation.incontext.DemonstrationPool`
    when k > 0). Returns ``(result entry without split, prediction records)``; samples read = the
    entry's ``n`` + its ``skipped`` counts. Raises ``ValueError`` naming ``where`` when no sample is
    left or the pool is too small for k."""
    if k > 0:
        from mmit.evaluation.incontext import incontext_items

        items, n, skips = incontext_items(items, skips, pool, k)
        if not items:
            raise ValueError(f"{where}: task {task.name!r} has no usable sample with {k} demonstrations "
                             f"(skipped: {skips.as_dict()})")
    ts = time.perf_counter()
    records = score_items(model, processor, task, items, batch_size, progress)
    res: Dict[str, Any] = {"n": n, "n_prompts": len(records), "skipped": skips.as_dict(),
                           "chance": chance_level(task, items)}
    res.update(task_metrics(task, records))
    res.update(honest_baselines(task, records))
    res["seconds"] = round(time.perf_counter() - ts, 3)
    return res, records


def _json_safe(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def run_suite(config_path: str, checkpoint: str, output: str, overrides: Sequence[str] = (),
              model=None, processor=None, progress: bool = True, plot: bool = True) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` on the suite (or single task) in ``config_path``; write the outputs
    into ``output`` (module docstring) and return the results dict.

    ``model``/``processor`` skip loading the checkpoint (tests, notebooks).
    Raises ``FileNotFoundError`` / ``ValueError`` naming the file for bad configs or data.
    """
    suite, tasks = load_suite(config_path, overrides)
    if model is None:
        from mmit.inference import load_for_inference
        from mmit.training.checkpoint import resolve_checkpoint_dir

        checkpoint = str(resolve_checkpoint_dir(checkpoint))
        model, processor, _ = load_for_inference(checkpoint)
    model.eval()
    decode = getattr(processor, "decode_media", None)  # the family decodes video / audio as it reads them
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    from mmit.evaluation.metrics.baselines import CI_METHOD

    results: Dict[str, Any] = {"suite": suite.name, "checkpoint": str(checkpoint),
                               "config_hash": config_hash(suite, tasks), "ci_method": CI_METHOD, "tasks": {}}
    all_records: List[Dict[str, Any]] = []
    task_cfgs = {t.name: t for _, t in tasks}
    t0 = time.perf_counter()
    pred_path = out_dir / "predictions.jsonl"
    with open(pred_path, "w", encoding="utf-8") as pf:
        for path, task in tasks:
            limit = min(x for x in (task.max_samples, suite.max_samples, math.inf) if x is not None)
            items, n, skips = load_items(task, None if limit == math.inf else int(limit), path, decode)
            if not items:
                raise ValueError(f"{path}: task {task.name!r} has no usable sample in {task.data.path} "
                                 f"(skipped: {skips.as_dict()})")
            pool = None
            if any(k > 0 for k in task.shots):
                from mmit.evaluation.incontext import DemonstrationPool

                pool = DemonstrationPool.load(task, path)
            per_k: Dict[int, Dict[str, Any]] = {}
            for k in task.shots:
                res, records = score_task_k(model, processor, task, items, n, skips, pool, k, suite.batch_size,
                                            progress, path)
                per_k[k] = res
                for r in records:
                    pf.write(json.dumps(_json_safe(r), ensure_ascii=False) + "\n")
                if k == task.shots[0]:
                    head_records = records
                log.info("%s (%s%s): %s = %.4f on %d samples", task.name, task.split,
                         f", {k}-shot" if is_incontext(task) else "", res["metric"], res[res["metric"]], res["n"])
            res = {"split": task.split, **per_k[task.shots[0]]}
            if is_incontext(task):
                res["shots"] = {str(k): v for k, v in per_k.items()}
                if pool is not None:
                    res["demonstrations"] = pool.summary()
            results["tasks"][task.name] = res
            all_records.extend(head_records)
    results["splits"] = split_summary(results["tasks"], all_records, task_cfgs)
    results["seconds"] = round(time.perf_counter() - t0, 3)
    (out_dir / "eval_config.json").write_text(json.dumps(
        {"suite": {k: v for k, v in vars(suite).items()}, "tasks": {t.name: task_to_dict(t) for _, t in tasks}},
        indent=1, default=str))
    (out_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=1))
    if plot and suite.plot:
        from mmit.evaluation.report import plot_results

        png = plot_results(results, out_dir / suite.plot)
        results["plot"] = str(png) if png else None
    return results
