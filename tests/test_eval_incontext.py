"""k-shot in-context evaluation (OpenFlamingo, arXiv 2308.01390): config, the seeded demonstration
draw, the prompts each family builds from it, and ``mmit eval`` end to end on tiny checkpoints."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES, DEMO_JSON, ROOT, tiny_run_config
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.stats import SkipCounter
from mmit.evaluation.config import EvalDataConfig, TaskConfig, config_hash, load_suite, load_task
from mmit.evaluation.data import sample_items
from mmit.evaluation.incontext import DemonstrationPool, incontext_items

COLOURS = {"red": (200, 10, 10), "green": (10, 200, 10), "blue": (10, 10, 200), "yellow": (220, 220, 0)}


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n=6):
    """``n`` one-image colour samples ``s0..`` with a system turn, options and a ``thing`` field."""
    names = list(COLOURS)
    out = []
    for i in range(n):
        c = names[i % 4]
        out.append(Sample(id=f"s{i}", turns=[Turn("system", ""), Turn("user", "<image>\nWhat colour?"),
                                             Turn("assistant", c)],
                          media=[Media("image", data=_png(COLOURS[c]))], task="t",
                          meta={"options": names, "label": c, "fields": {"thing": f"shape{i}"}}))
    return out


def _task(**kw):
    return TaskConfig(name="t", output="rank", templates=["What colour is {thing}?", "Name the colour of {thing}."],
                      data=EvalDataConfig(path="x"), **kw)


# -- config -------------------------------------------------------------------------------------
def test_config_defaults_overrides_and_errors(tmp_path):
    base = "name: t\nsplit: held-in\ndata: {path: x}\n"
    (tmp_path / "zero.yaml").write_text(base)
    (tmp_path / "explicit.yaml").write_text(base + "shots: [0]\nshot_seed: 0\n")
    (tmp_path / "ks.yaml").write_text(base.replace("name: t", "name: t2") + "shots: [0, 4, 8]\nshot_seed: 3\n"
                                      "demonstrations: {format: llava, path: y, media_root: z}\n")
    zero, ks = load_task(str(tmp_path / "zero.yaml")), load_task(str(tmp_path / "ks.yaml"))
    assert zero.shots == [0] and zero.demonstrations is None and zero.shot_seed == 0
    assert ks.shots == [0, 4, 8] and ks.shot_seed == 3
    assert (ks.demonstrations.format, ks.demonstrations.path, ks.demonstrations.media_root) == ("llava", "y", "z")
    # zero-shot configs hash as before the in-context fields existed (defaults are left out)
    h = lambda p, *a: config_hash(*load_suite(str(tmp_path / p), list(a)))  # noqa: E731
    assert h("zero.yaml") == h("explicit.yaml") != h("ks.yaml")
    # a suite's shots / shot_seed replace every task's (also from the command line)
    (tmp_path / "suite.yaml").write_text("name: s\ntasks: [zero.yaml, ks.yaml]\nshots: [0, 2]\n")
    _, tasks = load_suite(str(tmp_path / "suite.yaml"), ["--shot_seed=7"])
    assert [(t.shots, t.shot_seed) for _, t in tasks] == [([0, 2], 7), ([0, 2], 7)]
    for extra, match in [("shots: [0, -1]\n", r"shots\[1\] must be an integer >= 0"),
                         ("shots: []\n", "shots must list at least one k"),
                         ("shots: [4, 4]\n", "lists a k twice"),
                         ("shots: [0, yes]\n", "shots"),
                         ("demonstrations: {format: llava}\n", "demonstrations.path is required"),
                         ("demonstrations: {path: y, missing_media: maybe}\n", "demonstrations.missing_media"),
                         ("demonstrations: {path: y, pth: z}\n", "pth"),
                         ("shot_seeds: 3\n", "shot_seeds")]:
        (tmp_path / "bad.yaml").write_text(base + extra)
        with pytest.raises(ValueError, match=match) as e:
            load_task(str(tmp_path / "bad.yaml"))
        assert "bad.yaml" in str(e.value)
    (tmp_path / "bad_suite.yaml").write_text("name: s\ntasks: [zero.yaml]\nshots: [-2]\n")
    with pytest.raises(ValueError, match=r"bad_suite.yaml: shots\[0\]"):
        load_suite(str(tmp_path / "bad_suite.yaml"))


# -- the draw -----------------------------------------------------------------------------------
def test_draw_is_seeded_per_sample_and_never_the_query():
    samples = _samples(12)
    pool = DemonstrationPool(_task(), samples, "t.yaml")
    other = DemonstrationPool(_task(shot_seed=1), samples, "t.yaml")
    for s in samples:
        for k in (1, 4, 8, 11):
            got = pool.draw(s.id, k)
            assert got == DemonstrationPool(_task(), samples, "t.yaml").draw(s.id, k)  # deterministic
            assert len(got) == len(set(got)) == k and s.id not in [pool.ids[i] for i in got]
    draws = lambda p: [p.draw(s.id, 4) for s in samples]  # noqa: E731
    assert draws(pool) != draws(other)                       # another seed draws others
    assert len({tuple(d) for d in draws(pool)}) > 6          # and samples differ from each other
    assert pool.draw("s0", 0) == []
    with pytest.raises(ValueError, match=r"t.yaml: shots: k=12 .* only 11 besides sample 's0'"):
        pool.draw("s0", 12)
    assert len(pool.draw("not-in-pool", 12)) == 12           # a query from elsewhere may use the whole pool


def test_items_templates_order_and_accounting():
    task = _task()
    samples = _samples(6)
    items = [it for s in samples[:3] for it in sample_items(task, s, "t.yaml")]
    pool = DemonstrationPool(task, samples, "t.yaml")
    base_skips = SkipCounter()
    base_skips.add("missing-media", "gone")
    out, n, skips = incontext_items(items, base_skips, pool, 2)
    assert n == 3 and len(out) == 6 and skips.as_dict() == {"missing-media": 1}
    for it, q in zip(out, items):
        d = [pool.samples[pool.ids.index(i)] for i in it.demonstrations]
        assert it.shots == 2 and len(d) == 2 and it.sample_id not in it.demonstrations
        assert it.candidates == q.candidates and it.reference == q.reference  # rank candidates stay the query's
        # query system turn first, then each demonstration under the QUERY's template, then the query
        tpl = task.templates[it.template]
        want = [Turn("system", "")]
        for s in d:
            want += [Turn("user", "<image>\n" + tpl.format(thing=s.meta["fields"]["thing"])),
                     Turn("assistant", s.meta["label"])]
        assert it.turns == want + [q.turns[-1]]
        assert [im.getpixel((0, 0)) for im in it.images] == [COLOURS[s.meta["label"]] for s in d] + \
            [q.images[0].getpixel((0, 0))]
    # the same demonstrations for every template of a sample
    assert out[0].demonstrations == out[1].demonstrations
    # an undecodable demonstration skips the query (counted) under skip and raises under error
    broken = _samples(6)
    for s in broken[3:]:
        s.media[0].data = b"not an image"
    pool = DemonstrationPool(task, broken, "t.yaml")
    out, n, skips = incontext_items(items, SkipCounter(), pool, 3)
    assert n + skips.total == 3 and n < 3 and set(skips.as_dict()) == {"demonstration-undecodable-image"}
    with pytest.raises(SampleError):
        incontext_items(items, SkipCounter(), DemonstrationPool(task, broken, "t.yaml", missing_media="error"), 3)


# -- prompts of the families --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llava():
    from mmit.families.llava.config import LlavaConfig
    from mmit.families.llava.model import build_llava
    from mmit.families.llava.processor import LlavaProcessor

    torch.manual_seed(0)
    mc = LlavaConfig()
    mc.vision_tower.name, mc.llm.name_or_path, mc.template = "tiny-clip-vit", "tiny-llama", "vicuna-v1"
    model, tok = build_llava(mc)
    return model.eval(), LlavaProcessor(tok, "vicuna-v1", model.vision_tower.image_processor, model.num_image_tokens,
                                        model.image_token_id, 2048)


def test_llava_prompt_holds_the_demonstrations_answers_in_order(tiny_llava):
    model, proc = tiny_llava
    task = _task()
    samples = _samples(6)
    pool = DemonstrationPool(task, samples, "t.yaml")
    items = sample_items(task, samples[0], "t.yaml")
    out, _, _ = incontext_items(items, SkipCounter(), pool, 2)
    it = out[1]
    item = proc.prompt(it.turns, it.images, it.sample_id)
    text = proc.tokenizer.decode(item["raw_ids"])
    d = [pool.samples[pool.ids.index(i)] for i in it.demonstrations]
    pieces = [f"Name the colour of {d[0].meta['fields']['thing']}. ASSISTANT: {d[0].meta['label']}</s>",
              f"Name the colour of {d[1].meta['fields']['thing']}. ASSISTANT: {d[1].meta['label']}</s>",
              "Name the colour of shape0. ASSISTANT:"]
    at = [text.index(p) for p in pieces]
    assert at == sorted(at) and text.endswith(pieces[-1]) and text.count("<image>") == 3
    assert item["pixel_values"].shape[0] == 3  # demonstrations' images first, then the query's


# -- end to end ---------------------------------------------------------------------------------
N = 3  # query samples per task


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from mmit.evaluation.procedural import TASKS
    from mmit.evaluation.procedural.build import build_eval

    root = tmp_path_factory.mktemp("incontext_shards")
    build_eval(str(root), [TASKS["color"]], 6, seed=1)
    return root


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory):
    """A 2-step tiny LLaVA checkpoint trained on held-in procedural shards (as tests/test_eval_cli.py)."""
    from mmit.evaluation.procedural.build import build_train
    from mmit.evaluation.procedural.tasks import tasks_of_split
    from mmit.training.trainer import train

    root = tmp_path_factory.mktemp("incontext_llava")
    build_train(str(root / "train"), tasks_of_split("held-in"), 4, seed=0)
    cfg = tiny_run_config(root, max_steps=2, batch_size=4)
    cfg.data.format, cfg.data.path, cfg.data.media_root = "shards", str(root / "train"), None
    cfg.data.shuffle_buffer = 0
    return train(cfg)


def _suite(root: Path, shards: Path, shots: str, gen_shots: str = None) -> str:
    from mmit.evaluation.procedural import TASKS

    ks = f"shots: {shots}\n" if shots else ""
    (root / "color.yaml").write_text(
        f"name: color\nsplit: held-in\ndata: {{format: shards, path: {shards / 'color'}}}\n"
        f"templates: {json.dumps(list(TASKS['color'].templates[:2]))}\noutput: rank\nmetrics: [mc-accuracy]\n{ks}")
    gks = f"shots: {gen_shots or shots}\n" if (gen_shots or shots) else ""
    (root / "gen.yaml").write_text(
        f"name: llava-gen\nsplit: held-out\ndata: {{format: llava, path: {DEMO_JSON}, media_root: {DEMO_IMAGES}}}\n"
        f"output: generate\ngenerate: {{max_new_tokens: 3}}\nmetrics: [exact-match]\npostprocess: lower\n{gks}")
    (root / "suite.yaml").write_text("name: ks\ntasks: [color.yaml, gen.yaml]\nbatch_size: 4\n")
    return str(root / "suite.yaml")


def _eval(run, root, suite, tag):
    from mmit.cli import main

    out = root / tag
    assert main(["eval", "--config_path", suite, "--checkpoint", str(run), "--output", str(out),
                 f"--max_samples={N}", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    lines = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    return res, lines


def test_llava_kshot_both_scorers_and_zero_shot_unchanged(llava_run, shards, tmp_path, capsys):
    res0, lines0 = _eval(llava_run, tmp_path, _suite(tmp_path, shards, ""), "zero")
    table0 = capsys.readouterr().out
    res, lines = _eval(llava_run, tmp_path, _suite(tmp_path, shards, "[0, 2]", "[0, 1]"), "ks")
    table = capsys.readouterr().out
    drop = ("seconds", "shots", "demonstrations")
    for name in ("color", "llava-gen"):
        t, t0 = res["tasks"][name], res0["tasks"][name]
        # the headline (k = first entry of shots = 0) is exactly the zero-shot run
        assert {k: v for k, v in t.items() if k not in drop} == {k: v for k, v in t0.items() if k not in drop}
        assert "shots" not in t0 and "demonstrations" not in t0
        ks = ["0", "2"] if name == "color" else ["0", "1"]
        assert list(t["shots"]) == ks
        assert {k: v for k, v in t["shots"]["0"].items() if k != "seconds"} == \
            {k: v for k, v in t0.items() if k not in drop + ("split",)}
        read = t0["n"] + sum(t0["skipped"].values())
        for k in ks:
            e = t["shots"][k]
            assert e["n"] + sum(e["skipped"].values()) == read  # records in = scored + skipped, per k
            mine = [l for l in lines if l["task"] == name and l["shots"] == int(k)]
            assert len(mine) == e["n_prompts"] and e["metric"] in e
            for l in mine:
                assert len(l["demonstrations"]) == int(k) and l["id"] not in l["demonstrations"]
        assert t["demonstrations"]["seed"] == 0 and t["demonstrations"]["size"] >= 5
    # zero-shot lines are the same lines, with shots / demonstrations added
    zero = [{k: v for k, v in l.items() if k not in ("shots", "demonstrations")} for l in lines if l["shots"] == 0]
    assert zero == lines0 and all("shots" not in l for l in lines0)
    color2 = [l for l in lines if l["task"] == "color" and l["shots"] == 2]
    assert len(color2) == 2 * N and all(len(l["scores"]) == len(l["candidates"]) == 4 for l in color2)
    # the demonstrations reached the model: every 2-shot prompt scores its candidates differently
    scores0 = {(l["id"], l["template"]): l["scores"] for l in lines0 if l["task"] == "color"}
    assert all(l["scores"] != pytest.approx(scores0[(l["id"], l["template"])], abs=1e-6) for l in color2)
    assert all("raw_prediction" in l for l in lines if l["task"] == "llava-gen" and l["shots"] == 1)
    # per-k split means; the terminal table has a shots column and one row per (task, k)
    assert set(res["splits"]["held-in"]["shots"]) == {"0", "2"}
    assert res["splits"]["held-in"]["shots"]["2"]["mean"] == pytest.approx(
        res["tasks"]["color"]["shots"]["2"]["mc-accuracy"])
    assert "shots" in table.splitlines()[1] and "shots" not in table0.splitlines()[1]
    rows = [r.split() for r in table.splitlines() if r.startswith("color ")]
    assert [r[2] for r in rows] == ["0", "2"]
    # the headline k is the first entry of shots
    first, _ = _eval(llava_run, tmp_path, _suite(tmp_path, shards, "[2, 0]", "[1]"), "first")
    c = first["tasks"]["color"]
    assert c["mc-accuracy"] == c["shots"]["2"]["mc-accuracy"] and list(c["shots"]) == ["2", "0"]
    assert c["shots"]["2"] | {"seconds": 0} == res["tasks"]["color"]["shots"]["2"] | {"seconds": 0}  # same draw


@pytest.mark.parametrize("family", ["flamingo", "instructblip"])
def test_kshot_eval_on_other_families(family, shards, tmp_path):
    """One k-shot eval (rank and generate) through a tiny flamingo (cross-attention, Otter in-context
    chunks) and InstructBLIP (text concatenated behind every image's query tokens) checkpoint."""
    from mmit.config.schema import load_config
    from mmit.evaluation.runner import run_suite
    from mmit.inference import load_for_inference
    from mmit.training.trainer import train

    yaml_ = {"flamingo": "otter/tiny.yaml", "instructblip": "instructblip/tiny.yaml"}[family]
    extra = ["--model.llm.name_or_path=tiny-llama"] if family == "instructblip" else []
    cfg = load_config(str(ROOT / "configs" / yaml_),
                      ["--data.format=llava", f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}",
                       "--train.stage=align", "--train.max_steps=2", "--train.batch_size=4", "--train.report_to=none",
                       "--train.progress_bar=false", f"--train.output_dir={tmp_path / 'run'}", *extra])
    run = train(cfg)
    suite = _suite(tmp_path, shards, "[0, 2]")
    res = run_suite(suite, str(run), str(tmp_path / "out"), [f"--max_samples={N}"], progress=False, plot=False)
    for name in ("color", "llava-gen"):
        t = res["tasks"][name]
        assert list(t["shots"]) == ["0", "2"] and t["shots"]["2"]["n"] == N
    # the prompt as the family's processor builds it from the demonstrations
    model, proc, _ = load_for_inference(run / "final")
    line = next(json.loads(l) for l in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
                if '"shots": 2' in l and '"color"' in l)
    from mmit.evaluation.data import load_items

    _, tasks = load_suite(suite)
    items, _, skips = load_items(tasks[0][1], 1, tasks[0][0])
    pool = DemonstrationPool.load(tasks[0][1], tasks[0][0])
    it = incontext_items(items, skips, pool, 2)[0][0]
    assert it.demonstrations == line["demonstrations"]
    answers = [pool.samples[pool.ids.index(i)].turns[-1].content for i in it.demonstrations]
    text = proc.tokenizer.decode(proc.prompt(it.turns, it.images, it.sample_id)["input_ids"])
    if family == "flamingo":  # Otter chunks: <image>User:q GPT:<answer>a<|endofchunk|>, the query last
        assert text.count("<|endofchunk|>") == 2 and text.count("<image>") == 3
        for a in answers:
            assert f"<answer>{a}<|endofchunk|>" in text
        assert text.rstrip().endswith("What colour is the shape? GPT:<answer>")
    else:  # the instruction: every turn's text, the demonstrations' answers in order
        assert text.index(answers[0]) < text.rindex("What colour is the shape?")
