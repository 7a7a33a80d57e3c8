"""The ``mmc4`` reader (MMC4 arXiv 2304.06939) and the flamingo processor's document mode (OpenFlamingo
arXiv 2308.01390, ``preprocess_interleaved``): image rules, counted skips, the rendered tokens and label
mask of a 2-image document, ``mmit convert`` round trip and a 2-step training run on the shards."""

from __future__ import annotations

import base64
import gzip
import io
import json
import zipfile

import pytest
import torch

from conftest import ROOT
from mmit.data.sample import Sample, SampleError, Turn
from mmit.data.sources import available_formats, get_reader
from mmit.data.sources.mmc4 import read_mmc4
from mmit.data.stats import SkipCounter

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
          (90, 90, 90), (250, 250, 250)]


def png(color, size=24) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def noisy_png(size) -> bytes:
    """A PNG that does not compress: larger than the solid squares of :func:`png`."""
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((size, size), 80).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_images(folder, n=len(COLORS)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(png(COLORS[i]))
    return folder


def info(i, idx, sim, **kw):
    return {"image_name": f"img{i}.png", "raw_url": f"http://x/{i}.png", "matched_text_index": idx,
            "matched_sim": sim, **kw}


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read(path, root, **kw):
    stats = SkipCounter()
    return list(read_mmc4(path, media_root=root, stats=stats, **kw)), stats


DOC = {"url": "http://example.com/a", "could_have_url_duplicate": 0,
       "text_list": ["Intro.", "A red square. ", "", "Green follows.", "The end."],
       # image_info out of document order; img2 is under the threshold, img3 exactly at it
       "image_info": [info(1, 3, 0.30), info(0, 1, 0.25), info(2, 0, 0.20), info(3, 4, 0.24)]}


def test_registered():
    assert "mmc4" in available_formats() and get_reader("mmc4") is read_mmc4


def test_threshold_order_and_text(tmp_path):
    root = write_images(tmp_path / "imgs")
    out, stats = read(write_jsonl(tmp_path / "d.jsonl", [DOC]), root)
    assert stats.total == 0 and len(out) == 1
    s = out[0]
    assert [(t.role, t.content) for t in s.turns] == [
        ("user", ""), ("assistant", "Intro.<image>A red square.<image>Green follows.<image>The end.")]
    assert [m.meta["image_name"] for m in s.media] == ["img0.png", "img1.png", "img3.png"]
    assert all(m.path.startswith(str(root)) and m.data is None for m in s.media)
    assert (s.id, s.task, s.source) == ("0", "interleaved", "mmc4")
    assert s.meta == {"document": True, "url": "http://example.com/a", "matched_sim": [0.25, 0.30, 0.24],
                      "could_have_url_duplicate": 0}
    assert s.validate() is s
    # max_images keeps the first ones in document order, not in image_info order
    s2 = read(tmp_path / "d.jsonl", root, max_images=2)[0][0]
    assert [m.meta["image_name"] for m in s2.media] == ["img0.png", "img1.png"]
    assert s2.turns[1].content == "Intro.<image>A red square.<image>Green follows. The end."
    # a higher threshold
    s3 = read(tmp_path / "d.jsonl", root, sim_threshold=0.26)[0][0]
    assert [m.meta["image_name"] for m in s3.media] == ["img1.png"]


def test_default_max_images_two_on_one_sentence_and_matrix_fallback(tmp_path):
    root = write_images(tmp_path / "imgs")
    many = {"text_list": [f"S{j}." for j in range(8)],
            "image_info": [info(i, 7 - i, 0.5) for i in range(8)]}
    same = {"id": "same", "text_list": ["One.", "Two."],
            "image_info": [info(4, 1, 0.9), info(5, 1, 0.3), {"image_name": "img6.png"}],
            "similarity_matrix": [[0.0, 0.9], [0.1, 0.3], [0.6, 0.2]]}
    out, stats = read(write_jsonl(tmp_path / "d.jsonl", [many, same]), root)
    assert stats.total == 0
    assert [m.meta["image_name"] for m in out[0].media] == [f"img{i}.png" for i in (7, 6, 5, 4, 3, 2)]
    assert out[0].turns[1].content == "<image>S0.<image>S1.<image>S2.<image>S3.<image>S4.<image>S5. S6. S7."
    # img6 has no matched_* fields: argmax of its similarity_matrix row (sentence 0, 0.6)
    assert out[1].id == "same" and out[1].turns[1].content == "<image>One.<image><image>Two."
    assert [m.meta.get("image_name") for m in out[1].media] == ["img6.png", "img4.png", "img5.png"]
    assert out[1].meta["matched_sim"] == [0.6, 0.9, 0.3]


def test_base64_load_bytes_and_min_image_bytes(tmp_path):
    root = write_images(tmp_path / "imgs")
    big = noisy_png(64)
    doc = {"text_list": ["Small.", "Big."],
           "image_info": [info(0, 0, 0.5),
                          {"image_base64": base64.b64encode(big).decode(), "matched_text_index": 1, "matched_sim": 0.5}]}
    path = write_jsonl(tmp_path / "d.jsonl", [doc])
    s = read(path, root, load_bytes=True)[0][0]
    assert [m.data for m in s.media] == [(root / "img0.png").read_bytes(), big]
    assert s.media[1].path is None and s.media[1].ext == "png"
    small = len((root / "img0.png").read_bytes())
    for load in (False, True):
        s = read(path, root, load_bytes=load, min_image_bytes=small + 1)[0][0]
        assert s.turns[1].content == "Small.<image>Big." and len(s.media) == 1


def test_skips_counted_by_reason(tmp_path):
    root = write_images(tmp_path / "imgs", 2)
    (tmp_path / "secret.png").write_bytes(png((1, 2, 3)))
    lines = [DOC | {"image_info": [info(0, 1, 0.5)]},                                   # 1 kept
             '{"text_list": ["broken"',                                               # 2 malformed-json
             "",                                                                       # blank: not a record
             {"text_list": ["  ", ""], "image_info": [info(0, 0, 0.9)]},              # 4 no-text
             {"text_list": ["Low."], "image_info": [info(0, 0, 0.1)]},                # 5 no-matched-image
             {"text_list": ["None."]},                                                # 6 no-matched-image
             {"text_list": ["Gone."], "image_info": [info(7, 0, 0.5)]},               # 7 missing-media
             {"text_list": ["Out."], "image_info": [{"image_name": "../secret.png", "matched_text_index": 0,
                                                      "matched_sim": 0.9}]},          # 8 media-outside-root
             {"text_list": ["B64."], "image_info": [{"image_base64": "@@@", "matched_text_index": 0,
                                                      "matched_sim": 0.9}]},          # 9 bad-base64
             {"text_list": ["Idx."], "image_info": [info(0, 5, 0.9)]},                # 10 invalid-record
             [1, 2],                                                                   # 11 invalid-record
             {"text_list": ["Two."], "image_info": [info(1, 0, 0.3)]}]                # 12 kept
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    out, stats = read(path, root)
    assert [s.id for s in out] == ["0", "10"]
    assert stats.as_dict() == {"bad-base64": 1, "invalid-record": 2, "malformed-json": 1, "missing-media": 1,
                               "media-outside-root": 1, "no-matched-image": 2, "no-text": 1}
    assert len(out) + stats.total == 11  # non-blank lines
    assert stats.examples_dict()["malformed-json"][0].startswith(f"1: {path}:2: malformed JSON")
    assert "outside the media root" in stats.examples_dict()["media-outside-root"][0]
    with pytest.raises(SampleError, match=f"{path}:2: malformed JSON") as e:
        list(read_mmc4(path, media_root=root, missing="error"))
    assert e.value.reason == "malformed-json"
    with pytest.raises(FileNotFoundError):
        read_mmc4(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError):
        read_mmc4(path, max_images=0)


def test_gzip_and_zip_inputs(tmp_path):
    root = write_images(tmp_path / "imgs")
    text = json.dumps(DOC) + "\n" + "{bad\n"
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(text)
    with zipfile.ZipFile(tmp_path / "docs_shard_0_v2.jsonl.zip", "w") as z:
        z.writestr("docs_shard_0_v2.jsonl", text)
    want = read(write_jsonl(tmp_path / "d.jsonl", [DOC]), root)[0][0]
    for name in ("d.jsonl.gz", "docs_shard_0_v2.jsonl.zip"):
        out, stats = read(tmp_path / name, root)
        assert [s.turns for s in out] == [want.turns] and stats.as_dict() == {"malformed-json": 1}
    assert "docs_shard_0_v2.jsonl.zip!docs_shard_0_v2.jsonl:2" in stats.examples_dict()["malformed-json"][0]


# -- the flamingo processor's document mode ------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    from mmit.config.components import LLMConfig
    from mmit.models.llm import load_llm
    from mmit.models.tokenizer import ensure_special_token

    _, tokenizer, _ = load_llm(LLMConfig(name_or_path="tiny-llama"))
    for t in ("<|endofchunk|>", "<answer>"):
        ensure_special_token(tokenizer, t)
    return tokenizer


def _proc(tok, max_length=512):
    from mmit.families.flamingo.processor import OtterProcessor

    return OtterProcessor(tok, lambda ims: torch.stack([torch.full((3, 4, 4), float(i)) for i in range(len(ims))]),
                          max_length)


def openflamingo_mmc4_labels(ids, media_id, eoc_id, pad_id):
    """OpenFlamingo's MMC4 label rule (``train_utils.py`` ``train_one_epoch``), written out independently."""
    labels = list(ids)
    labels = [-100 if t == pad_id else t for t in labels]
    i = 0
    while i < len(labels) and labels[i] != media_id:
        labels[i], i = -100, i + 1
    for e in [k for k, t in enumerate(ids) if t == eoc_id]:
        k = e + 1
        while k < len(labels) and labels[k] != media_id:
            labels[k], k = -100, k + 1
    return [-100 if t == media_id else t for t in labels]


def doc_sample(root, text="Intro words.<image>A red square. It is red.<image>Green follows."):
    from mmit.data.sample import Media

    return Sample("doc", [Turn("user", ""), Turn("assistant", text)],
                  [Media("image", path=str(root / "img0.png")), Media("image", path=str(root / "img1.png"))],
                  task="interleaved", meta={"document": True})


def test_document_tokens_and_labels(tmp_path, tok):
    root = write_images(tmp_path / "imgs", 2)
    proc = _proc(tok)
    item = proc(doc_sample(root))
    ids = item["input_ids"].tolist()
    assert tok.decode(ids) == ("<s>Intro words.<image>A red square. It is red.<|endofchunk|>"
                               "<image>Green follows.<|endofchunk|></s>")
    labels = item["labels"].tolist()
    learned = tok.decode([t for t, l in zip(ids, labels) if l != -100])
    assert learned == "A red square. It is red.<|endofchunk|>Green follows.<|endofchunk|>"
    assert labels == openflamingo_mmc4_labels(ids, proc.media_token_id, proc.endofchunk_token_id, tok.pad_token_id)
    assert item["pixel_values"].shape == (2, 3, 4, 4)
    # a batch with a chat sample: right padding is -100, image positions point at <image> tokens
    chat = Sample("c", [Turn("user", "Hi"), Turn("assistant", "Hello.")])
    batch = proc.collate([proc(chat), item])
    assert batch.media["image"].sample_index.tolist() == [1, 1]
    assert [ids[p] for p in batch.media["image"].position.tolist()] == [proc.media_token_id] * 2
    row0 = batch.labels[0][batch.attention_mask[0] == 0]
    assert row0.numel() > 0 and bool((row0 == -100).all())
    # prompts are unchanged by document mode
    assert tok.decode(proc.prompt([Turn("user", "<image>\nWhat is it?")])["input_ids"]) == \
        "<s><image>User:What is it? GPT:<answer>"


def test_document_max_length(tmp_path, tok):
    root = write_images(tmp_path / "imgs", 2)
    full = _proc(tok)(doc_sample(root))["input_ids"].tolist()
    eoc = _proc(tok).endofchunk_token_id
    first_chunk_end = full.index(eoc) + 1
    item = _proc(tok, max_length=len(full) - 2)(doc_sample(root))  # cut after the first whole chunk
    assert item["input_ids"].tolist() == full[:first_chunk_end] and item["pixel_values"].shape[0] == 1
    assert _proc(tok, max_length=len(full) - 1)(doc_sample(root))["input_ids"].tolist() == full[:-1]  # no EOS room
    with pytest.raises(SampleError) as e:
        _proc(tok, max_length=first_chunk_end - 1)(doc_sample(root))
    assert e.value.reason == "too-long"
    stats = SkipCounter()
    assert _proc(tok, max_length=first_chunk_end - 1).try_call(doc_sample(root), stats) is None
    assert stats.as_dict() == {"too-long": 1}
    no_image = Sample("t", [Turn("user", ""), Turn("assistant", "Only text.")], meta={"document": True})
    with pytest.raises(SampleError) as e:
        _proc(tok)(no_image)
    assert e.value.reason == "no-supervised-tokens"


def test_reader_output_renders(tmp_path, tok):
    root = write_images(tmp_path / "imgs")
    s = read(write_jsonl(tmp_path / "d.jsonl", [DOC]), root)[0][0]
    item = _proc(tok)(s)
    assert tok.decode(item["input_ids"]) == ("<s>Intro.<image>A red square.<|endofchunk|><image>Green follows."
                                             "<|endofchunk|><image>The end.<|endofchunk|></s>")


# -- shards and training -------------------------------------------------------------------------------

def _corpus(tmp_path, n=6):
    root = write_images(tmp_path / "imgs")
    docs = [{"url": f"http://example.com/{d}",
             "text_list": [f"Page {d} starts here.", "A colored square.", "Another color now.", "Bye."],
             "image_info": [info(d % 8, 1, 0.3), info((d + 1) % 8, 2, 0.28), info((d + 2) % 8, 3, 0.1)]}
            for d in range(n)]
    return write_jsonl(tmp_path / "docs.jsonl", docs), root


def test_convert_round_trip_and_two_training_steps(tmp_path):
    from mmit.cli import main
    from mmit.config.schema import load_config
    from mmit.data.shards import iter_shards
    from mmit.training.trainer import train

    docs, root = _corpus(tmp_path)
    assert main(["convert", "--format", "mmc4", "--input", str(docs), "--media-root", str(root),
                 "--output", str(tmp_path / "out"), "--shard-size", "4", "--no-progress"]) == 0
    stats = json.loads((tmp_path / "out" / "_stats.json").read_text())
    assert (stats["records_in"], stats["written"], stats["skipped"]) == (6, 6, {})
    back = {s.id: s for s in iter_shards(tmp_path / "out", split_by_node=False, split_by_worker=False)}
    src = list(read_mmc4(docs, media_root=root, load_bytes=True))
    assert sorted(back) == sorted(s.id for s in src)
    for s in src:
        b = back[s.id]
        assert [(t.role, t.content) for t in b.turns] == [(t.role, t.content) for t in s.turns]
        assert [m.data for m in b.media] == [m.data for m in s.media] and len(s.media) == 2
        assert b.meta["document"] is True and b.meta["matched_sim"] == s.meta["matched_sim"]
    cfg = load_config(str(ROOT / "configs" / "otter" / "tiny.yaml"),
                      ["--data.format=shards", f"--data.path={tmp_path / 'out'}",
                       "--train.max_steps=2", "--train.stage=align", "--train.batch_size=4",
                       f"--train.output_dir={tmp_path / 'run'}", "--train.progress_bar=false"])
    run = train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_total"] == 0, summary
