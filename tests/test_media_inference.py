"""Video and audio through one processor contract (``decode_media`` / ``prompt(turns, media)`` /
``stop_strings``) into ``mmit generate`` and ``mmit eval``: the default (images only), InstructBLIP's
images + videos, counted skips by reason, the video held-out suite end to end, stop strings."""

from __future__ import annotations

import copy
import inspect
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES, ROOT, SHARED_SAMPLES
from mmit.cli import main as cli
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.video import DecodedVideo

VIDEOS = ("ironman", "dog_barking", "silence_girl", "yoga", "hitting_baseball")
DEMO_VIDEOS = ROOT / "demo_data" / "videos"
_EX, _CHAT = SHARED_SAMPLES / "video_llama" / "examples", SHARED_SAMPLES / "videochat" / "example"
SHARED_VIDEOS = {"ironman": _EX / "IronMan.mp4", "dog_barking": _EX / "dog_barking.mp4",
                 "silence_girl": _EX / "silence_girl.mp4", "yoga": _CHAT / "yoga.mp4",
                 "hitting_baseball": _CHAT / "hitting_baseball.mp4"}
TASKS = ("msvd-qa", "msrvtt-qa", "ivqa")
DOG = str(DEMO_IMAGES / "dog_running.jpg")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """The bundled clips, else copies of the shared originals under the demo names."""
    if all((DEMO_VIDEOS / f"{v}.mp4").is_file() for v in VIDEOS):
        return DEMO_VIDEOS
    if not all(p.is_file() for p in SHARED_VIDEOS.values()):
        pytest.skip("neither demo_data/videos nor the shared sample videos are here")
    d = tmp_path_factory.mktemp("videos")
    for name, src in SHARED_VIDEOS.items():
        shutil.copy(src, d / f"{name}.mp4")
    return d


@pytest.fixture(scope="module")
def suite(video_dir, tmp_path_factory):
    """``(suite file, working directory)``: configs/eval/video_heldout.yaml run from the project root
    when the demo clips are bundled, else a tmp copy whose tasks point at the copied clips."""
    if video_dir == DEMO_VIDEOS:
        return ROOT / "configs" / "eval" / "video_heldout.yaml", ROOT
    tmp = tmp_path_factory.mktemp("video-suite")
    clips = tmp / "ivqa_clips"
    clips.mkdir()
    for v in VIDEOS:
        (clips / f"{v}_0_6.mp4").symlink_to(video_dir / f"{v}.mp4")
    (tmp / "video").mkdir()
    for name in TASKS:
        text = (ROOT / "configs" / "eval" / "video" / f"{name}.yaml").read_text()
        text = (text.replace("demo_data/videoqa/ivqa_clips", str(clips)).replace("demo_data/videos", str(video_dir))
                .replace("demo_data/", f"{ROOT}/demo_data/"))
        (tmp / "video" / f"{name}.yaml").write_text(text)
    shutil.copy(ROOT / "configs" / "eval" / "video_heldout.yaml", tmp / "video_heldout.yaml")
    return tmp / "video_heldout.yaml", tmp


@pytest.fixture(scope="module")
def ib_run(tmp_path_factory):
    """A tiny InstructBLIP checkpoint (configs/instructblip/tiny.yaml, one training step)."""
    from mmit.config.schema import load_config
    from mmit.training.trainer import train

    out = tmp_path_factory.mktemp("ib-media") / "run"
    cfg = load_config(str(ROOT / "configs" / "instructblip" / "tiny.yaml"),
                      [f"--train.output_dir={out}", "--train.max_steps=1", "--train.batch_size=2",
                       "--train.warmup_ratio=0", "--train.progress_bar=false",
                       f"--data.path={ROOT / 'demo_data' / 'llava_demo.json'}", f"--data.media_root={DEMO_IMAGES}"])
    return train(cfg)


@pytest.fixture(scope="module")
def ib(ib_run):
    from mmit.inference import load_for_inference

    model, proc, _ = load_for_inference(ib_run)
    return model, proc


@pytest.fixture(scope="module")
def llava():
    from mmit.families.llava.config import LlavaConfig
    from mmit.families.llava.model import build_llava
    from mmit.families.llava.processor import LlavaProcessor

    torch.manual_seed(0)
    mc = LlavaConfig()
    mc.vision_tower.name, mc.llm.name_or_path, mc.template = "tiny-clip-vit", "tiny-llama", "vicuna-v1"
    model, tok = build_llava(mc)
    return model.eval(), LlavaProcessor(tok, "vicuna-v1", model.vision_tower.image_processor,
                                        model.num_image_tokens, model.image_token_id, 2048)


def _sample(*media, sid="s1"):
    head = "".join(f"<{m.kind}>\n" for m in media)
    return Sample(id=sid, turns=[Turn("user", head + "What happens?"), Turn("assistant", "Something.")],
                  media=list(media))


def _video(video_dir, name="yoga"):
    p = video_dir / f"{name}.mp4"
    return Media("video", path=str(p), data=p.read_bytes())


# -- the contract -------------------------------------------------------------------------------
def test_every_family_prompt_takes_media():
    from mmit.data.processor import Processor
    from mmit.families.flamingo.processor import OtterProcessor
    from mmit.families.instructblip.processor import InstructBlipProcessor
    from mmit.families.llava.processor import LlavaProcessor

    for cls in (Processor, LlavaProcessor, InstructBlipProcessor, OtterProcessor):
        assert list(inspect.signature(cls.prompt).parameters)[1:4] == ["turns", "media", "sample_id"], cls
    assert Processor().stop_strings() == []
    from mmit.data.processor import cut_at_stop_strings

    assert cut_at_stop_strings("a dog. User: hi", ["User:", "dog."]) == "a"
    assert cut_at_stop_strings("a dog ", ["cat"]) == "a dog " and cut_at_stop_strings("x", []) == "x"


def test_default_decode_media_reads_images_only(llava, video_dir, tmp_path):
    from mmit.data.processor import require_images

    _, proc = llava
    out = proc.decode_media(_sample(Media("image", path=DOG)))
    assert len(out) == 1 and isinstance(out[0], Image.Image) and out[0].mode == "RGB"
    with pytest.raises(SampleError, match=r"sample 's1': media kind 'video' is not supported by the llava family") as e:
        proc.decode_media(_sample(Media("image", path=DOG), _video(video_dir)))
    assert e.value.reason == "unsupported-media"
    with pytest.raises(SampleError, match=r"sample 'gone': cannot read image .*nope.jpg") as e:
        proc.decode_media(_sample(Media("image", path=str(tmp_path / "nope.jpg")), sid="gone"))
    assert e.value.reason == "missing-media"
    for m, reason in ((Media("image"), "missing-media"), (Media("image", path="x", data=b"nope"), "undecodable-image")):
        with pytest.raises(SampleError) as e:
            proc.decode_media(_sample(m))
        assert e.value.reason == reason
    video = DecodedVideo([Image.new("RGB", (8, 8))] * 2, [0, 1], [0.0, 0.1], 10.0, 0.2, 2)
    with pytest.raises(ValueError, match="llava prompts take PIL images only; media 0 is a DecodedVideo"):
        proc.prompt([Turn("user", "<image>\nWhat?")], [video])
    with pytest.raises(ValueError, match="flamingo prompts take PIL images only; media 1 is a Tensor"):
        require_images([out[0], torch.zeros(16000)], "flamingo")


def test_instructblip_decode_media_images_and_videos(ib, video_dir):
    from mmit.data.video import decode_video

    model, proc = ib
    media = proc.decode_media(_sample(Media("image", path=DOG), _video(video_dir)))
    assert isinstance(media[0], Image.Image) and isinstance(media[1], DecodedVideo)
    assert len(media[1].frames) == proc.num_frames == 4 and all(isinstance(f, Image.Image) for f in media[1].frames)
    want = decode_video((video_dir / "yoga.mp4").read_bytes(), "w", proc.num_frames, proc.max_pixels)
    assert media[1].indices == want.indices and np.array_equal(media[1].frames[2], want.frames[2])
    # the training item is built from the same decoded media: M query tokens per image and per frame
    item = proc(_sample(Media("image", path=DOG), _video(video_dir)))
    assert [(k, tuple(v.shape[:2])) for k, v in item["media"]] == [("image", (1, 3)), ("video", (4, 3))]
    prompt = proc.prompt([Turn("user", "<image>\n<video>\nWhat happens?")], media)
    assert int((prompt["input_ids"] == proc.image_token_id).sum()) == 5 * proc.num_query_tokens
    assert all(torch.equal(a[1], b[1]) for a, b in zip(prompt["media"], item["media"]))
    # audio is refused before anything is decoded; prompts refuse waveforms and other frame counts
    with pytest.raises(SampleError, match="media kind 'audio' is not supported by InstructBLIP") as e:
        proc.decode_media(_sample(Media("video", path="/nonexistent.mp4"), Media("audio", path="/x.wav")))
    assert e.value.reason == "unsupported-media"
    with pytest.raises(ValueError, match="not Tensor"):
        proc.prompt([Turn("user", "<audio>\nWhat?")], [torch.zeros(16000)])
    short = DecodedVideo(media[1].frames[:2], [0, 1], [0.0, 0.1], 8.0, 6.0, 48)
    with pytest.raises(ValueError, match="a video of 2 frames, InstructBLIP reads 4"):
        proc.prompt([Turn("user", "<video>\nWhat?")], [short])
    as_tensor = DecodedVideo(torch.stack([torch.from_numpy(np.array(f)) for f in media[1].frames]),
                             media[1].indices, media[1].timestamps, 8.0, 6.0, 48)
    assert torch.equal(proc.prompt([Turn("user", "<video>\nQ")], [as_tensor])["media"][0][1],
                       proc.prompt([Turn("user", "<video>\nQ")], [media[1]])["media"][0][1])
    with pytest.raises(SampleError) as e:
        proc.decode_media(_sample(Media("video", path="bad.mp4", data=(video_dir / "yoga.mp4").read_bytes()[:300])))
    assert e.value.reason == "undecodable-video"


# -- mmit generate ------------------------------------------------------------------------------
def test_generate_video_equals_prompt_with_the_decoded_video(ib, video_dir):
    from mmit.data.video import decode_video
    from mmit.inference import generate
    from mmit.models.interface import model_device

    model, proc = ib
    path = str(video_dir / "ironman.mp4")
    ans = generate(model, proc, "What is the man wearing?", video=path, max_new_tokens=6)
    v = decode_video(open(path, "rb").read(), path, proc.num_frames, proc.max_pixels)
    item = proc.prompt([Turn("user", "<video>\nWhat is the man wearing?")], [v])
    assert int((item["input_ids"] == proc.image_token_id).sum()) == proc.num_frames * proc.num_query_tokens
    batch = proc.collate_prompts([item]).to(model_device(model))
    direct = model.generate_tokens(batch, max_new_tokens=6, do_sample=False, eos_token_id=proc.stop_token_ids(),
                                   pad_token_id=proc.pad_id)[0].tolist()
    assert ans.token_ids == direct[:len(ans.token_ids)] and ans.text == proc.decode(ans.token_ids)
    # markers in the prompt: the same answer; a list of one path too
    assert generate(model, proc, "<video>\nWhat is the man wearing?", video=[path], max_new_tokens=6) == ans
    with pytest.raises(ValueError, match=r"2 <video> marker\(s\) but 1 video\(s\)"):
        generate(model, proc, "<video> or <video>?", video=path)
    with pytest.raises(ValueError, match=r"1 <image> marker\(s\) but 0 image\(s\)"):
        generate(model, proc, "<image> and", video=path)


def test_prompt_sample_orders_media_by_placeholders(video_dir):
    from mmit.inference import prompt_sample

    im = Image.open(DOG).convert("RGB")
    v1, v2 = str(video_dir / "yoga.mp4"), str(video_dir / "ironman.mp4")
    s, given = prompt_sample("Compare", {"image": [im], "video": [v1, v2], "audio": []})
    assert s.turns[0].content == "<image>\n<video>\n<video>\nCompare"
    assert [m.kind for m in s.media] == ["image", "video", "video"] and given[0] is im and given[1:] == [None, None]
    assert s.media[1].path == v1 and s.media[1].data == open(v1, "rb").read()
    s, given = prompt_sample("<video> then <image> then <video>", {"image": [DOG], "video": [v1, v2]})
    assert [(m.kind, m.path) for m in s.media] == [("video", v1), ("image", DOG), ("video", v2)]
    with pytest.raises(ValueError, match="expected a file path, got Image"):
        prompt_sample("x", {"video": [im]})


def test_cli_generate_video(ib_run, ib, video_dir, capsys):
    from mmit.inference import generate

    model, proc = ib
    path = str(video_dir / "dog_barking.mp4")
    assert cli(["generate", "--checkpoint", str(ib_run), "--video", path, "--prompt", "What is the man opening?",
                "--max-new-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = generate(model, proc, "What is the man opening?", video=path, max_new_tokens=5)
    assert out == {"text": want.text, "token_ids": want.token_ids}
    # image + video together; audio is refused with the SampleError's message (exit 2, no traceback)
    assert cli(["generate", "--checkpoint", str(ib_run), "--image", DOG, "--video", path, "--prompt", "Same?",
                "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert cli(["generate", "--checkpoint", str(ib_run), "--audio", path, "--prompt", "What barks?"]) == 2
    err = capsys.readouterr().err
    assert "media kind 'audio' is not supported by InstructBLIP" in err and "Traceback" not in err
    assert cli(["generate", "--checkpoint", str(ib_run), "--video", "/no/such.mp4", "--prompt", "x"]) == 2
    assert "video not found: /no/such.mp4" in capsys.readouterr().err


def test_cli_generate_video_on_an_image_only_family(llava, video_dir, monkeypatch, capsys):
    import mmit.inference

    model, proc = llava
    monkeypatch.setattr(mmit.inference, "load_for_inference", lambda ckpt: (model, proc, None))
    assert cli(["generate", "--checkpoint", "unused", "--video", str(video_dir / "yoga.mp4"), "--prompt", "What?"]) == 2
    err = capsys.readouterr().err
    assert "mmit generate: error: sample 'prompt': media kind 'video' is not supported by the llava family" in err
    assert cli(["generate", "--checkpoint", "unused", "--image", DOG, "--prompt", "What?", "--max-new-tokens", "2"]) == 0


# -- mmit eval ----------------------------------------------------------------------------------
def test_video_suite_files_read_cleanly(suite, monkeypatch):
    from mmit.data.stats import SkipCounter
    from mmit.evaluation.config import load_suite
    from mmit.evaluation.data import iter_task_samples

    path, cwd = suite
    monkeypatch.chdir(cwd)
    _, tasks = load_suite(str(path))
    assert [t.name for _, t in tasks] == list(TASKS) and {t.split for _, t in tasks} == {"held-out"}
    for _, t in tasks:
        assert t.data.path.startswith("demo_data/videoqa/") or cwd != ROOT
        stats = SkipCounter()
        samples = list(iter_task_samples(t, stats))
        assert len(samples) == 5 and not stats.as_dict()
        assert {m.kind for x in samples for m in x.media} == {"video"}
        if t.output == "rank":  # every answer is in the vocabulary it is ranked against
            assert all(x.turns[-1].content in t.rank.candidates for x in samples)


def test_mmit_eval_video_suite_end_to_end(ib_run, suite, tmp_path, monkeypatch):
    path, cwd = suite
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    assert cli(["eval", "--config_path", str(path), "--checkpoint", str(ib_run), "--output", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["tasks"]) == list(TASKS)
    for name, t in res["tasks"].items():
        assert (t["n"], t["n_prompts"], t["skipped"], t["split"]) == (5, 5, {}, "held-out"), name
        assert 0.0 <= t[t["metric"]] <= 1.0
    assert [t["metric"] for t in res["tasks"].values()] == ["mc-accuracy", "mc-accuracy", "ivqa-accuracy"]
    assert res["tasks"]["msvd-qa"]["chance"] == pytest.approx(0.1)
    lines = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 15 and res["splits"]["held-out"]["tasks"] == list(TASKS)
    for l in lines:
        assert l["prompt"].startswith("<video>\nQuestion: ")
        if l["task"] != "ivqa":
            assert l["prediction"] in l["candidates"] and len(l["scores"]) == 10


def test_image_only_family_counts_unsupported_media(llava, suite, video_dir, tmp_path, monkeypatch):
    from mmit.data.shards import write_shard
    from mmit.evaluation.config import load_suite
    from mmit.evaluation.data import load_items
    from mmit.evaluation.runner import run_suite

    model, proc = llava
    path, cwd = suite
    monkeypatch.chdir(cwd)
    _, tasks = load_suite(str(path))
    items, n, skips = load_items(tasks[0][1], None, tasks[0][0], proc.decode_media)
    assert (items, n, skips.as_dict()) == ([], 0, {"unsupported-media": 5})
    with pytest.raises(ValueError, match=r"task 'msvd-qa' has no usable sample .*'unsupported-media': 5"):
        run_suite(str(path), "tiny-llava", str(tmp_path / "o1"), model=model, processor=proc, progress=False)
    # a task mixing images and videos: the images are scored, the videos counted
    video = _video(video_dir)
    dog = Media("image", path=DOG, data=open(DOG, "rb").read())
    samples = [_sample(copy.deepcopy(m), sid=f"s{i}") for i, m in enumerate([dog, video, dog, video, video])]
    (tmp_path / "mixed").mkdir()
    write_shard(samples, tmp_path / "mixed" / "00000.tar")
    (tmp_path / "mixed.yaml").write_text(f"name: mixed\ndata: {{format: shards, path: {tmp_path / 'mixed'}}}\n"
                                         "output: rank\nrank: {candidates: [dog, cat]}\nmetrics: [mc-accuracy]\n")
    res = run_suite(str(tmp_path / "mixed.yaml"), "tiny-llava", str(tmp_path / "o2"), model=model, processor=proc,
                    progress=False, plot=False)
    assert res["tasks"]["mixed"]["n"] == 2 and res["tasks"]["mixed"]["skipped"] == {"unsupported-media": 3}


def test_skip_reasons_of_an_audio_reading_decoder(suite, ib, monkeypatch):
    """A family that reads audio (here a test processor) meets clips without an audio track: counted
    ``no-audio-track`` skips; read = used + skipped."""
    from mmit.data.audio import decode_audio
    from mmit.data.processor import Processor, media_bytes, unsupported_media
    from mmit.evaluation.config import load_suite
    from mmit.evaluation.data import load_items

    class AudioOfVideo(Processor):
        def decode_media(self, sample):
            unsupported_media(sample, ("video",), "audio-test")
            return [decode_audio(*media_bytes(sample, j))[0] for j in range(len(sample.media))]

    path, cwd = suite
    monkeypatch.chdir(cwd)
    _, tasks = load_suite(str(path))
    items, n, skips = load_items(tasks[2][1], None, tasks[2][0], AudioOfVideo().decode_media)
    assert n == 2 and skips.as_dict() == {"no-audio-track": 3}  # ironman and dog_barking have sound
    assert items[0].images[0].dtype == torch.float32 and items[0].images[0].dim() == 1
    items, n, _ = load_items(tasks[2][1], 2, tasks[2][0], ib[1].decode_media)
    assert n == 2 and all(isinstance(it.images[0], DecodedVideo) for it in items)


# -- stop strings -------------------------------------------------------------------------------
class _Force:
    """A transformers logits processor that makes greedy decoding emit ``ids`` (then repeat the last)."""

    def __init__(self, ids):
        self.ids, self.start = ids, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        out = torch.full_like(scores, -1e9)
        out[:, self.ids[min(input_ids.shape[1] - self.start, len(self.ids) - 1)]] = 0
        return out


def test_stop_strings_end_generation_and_cut_the_text(ib, video_dir, monkeypatch):
    from transformers import LogitsProcessorList

    from mmit.evaluation.config import GenerateConfig
    from mmit.evaluation.data import EvalItem
    from mmit.evaluation.scorers import generate_batch
    from mmit.families.instructblip.processor import InstructBlipProcessor
    from mmit.inference import generate

    class StopProcessor(InstructBlipProcessor):
        def stop_strings(self):
            return ["small dog"]

    model, proc = ib
    stop = copy.copy(proc)
    stop.__class__ = StopProcessor
    tok = proc.tokenizer
    ids = tok("it is a small dog. Bye now", add_special_tokens=False)["input_ids"]
    assert len(tok("small dog", add_special_tokens=False)["input_ids"]) > 1  # a multi-token stop string
    video = str(video_dir / "yoga.mp4")
    force = lambda: LogitsProcessorList([_Force(ids)])  # noqa: E731
    full = generate(model, proc, "What?", video=video, max_new_tokens=len(ids), logits_processor=force())
    assert full.text == "it is a small dog. Bye now" and full.token_ids == ids
    cut = generate(model, stop, "What?", video=video, max_new_tokens=len(ids), logits_processor=force())
    assert cut.text == "it is a"
    n = next(k for k in range(1, len(ids) + 1) if "small dog" in tok.decode(ids[:k]))
    assert cut.token_ids == ids[:n]  # generation ended on the token that completed the stop string

    seen, real = [], model.generate_tokens

    def spy(batch, **kw):
        seen.append(kw)
        return real(batch, logits_processor=force(), **kw)

    monkeypatch.setattr(model, "generate_tokens", spy)
    items = [EvalItem("t", "a", 0, [Turn("user", "<video>\nWhat?")], proc.decode_media(_sample(_video(video_dir))))]
    out = generate_batch(model, stop, items, GenerateConfig(max_new_tokens=len(ids)))
    assert out[0][0] == "it is a" and seen[-1]["stop_strings"] == ["small dog"] and seen[-1]["tokenizer"] is tok
    assert generate_batch(model, proc, items, GenerateConfig(max_new_tokens=len(ids)))[0][0] == full.text
    assert "stop_strings" not in seen[-1] and "tokenizer" not in seen[-1]
