"""Benchmark: samples/s of mmit's LLaVA-1.5 training input pipeline against LLaVA's own, both with 2
DataLoader workers, on real images and records.

What runs (one epoch each, batches of ``--batch``):

* ``mmit``: the trainer's data path, :func:`mmit.training.data.batches` (``end_epoch=1``: one
  epoch, as the baseline's loader; without it mmit's workers, which live across epochs, would
  already prepare the next epoch) over a
  :class:`~mmit.training.data.SampleStream` reading the records as ``data.format: llava``, with the
  LLaVA family's processor as ``family.processor`` builds it for ``clip-vit-l-14-336``: 336 px,
  ``image_aspect_ratio: pad``, the ``vicuna-v1`` template, ``<image>`` expanded to 576 tokens,
  ``max_length`` 2048; media confinement, content sniffing and label alignment checks included.
* ``llava``: a baseline written here the way haotian-liu/LLaVA ``llava/train/train.py`` does it
  (``LazySupervisedDataset`` + ``DataCollatorForSupervisedDataset``, LLaVA-1.5 settings): per sample
  ``Image.open(path).convert("RGB")``, ``expand2square`` with the processor mean as fill,
  ``CLIPImageProcessor.preprocess`` at 336 px, ``<image>`` moved to the front of the first turn, the
  vicuna-v1 prompt (system + ``USER: ... ASSISTANT: ...</s>``), ``tokenizer_image_token`` on the
  prompt and again on each round and each instruction to mask the targets; the collator pads per batch
  with ``pad_sequence`` and stacks the images. Written from the description of that code; nothing is
  copied from it.

Both use the same locally built tokenizer (mmit's tiny byte-level BPE: no hub) and the same
``CLIPImageProcessor`` (transformers' default backend). Records: ``demo_data/llava_demo.json`` with
its images, and the Vision-Flan website records of ``../shared/samples/vision_flan/tasks_web.json``
whose images are in the samples (see its MANIFEST.md); when ``../shared/samples`` is absent, the demo
records alone. The images are copied into a temporary media root (mmit confines media to it) and
the records repeated to ``--samples``.

Rounds alternate (llava, mmit, llava, mmit, ...) so drift in machine load hits both alike; the ratio
printed is the median over rounds of (mmit samples/s) / (llava samples/s) of the same round. Worker
start-up is inside the timing for both; the clock stops when the epoch's last batch arrives, for
both (a trainer consumes batches; the worker shutdown that follows is no throughput). The median
ratio with the worker shutdown inside the timing is printed too; one sample of each goes through first, untimed, in the main
process (lazy imports that the forked workers then inherit). ``--no-draft`` turns mmit's reduced-size JPEG decoding off
(:class:`mmit.data.media.Draft`) to show its share.

    OMP_NUM_THREADS=1 python bench/dataloader.py [--samples 192] [--batch 16] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "samples"
IMAGE_SIZE, NUM_IMAGE_TOKENS, MAX_LENGTH = 336, 576, 2048
IGNORE_INDEX, IMAGE_TOKEN_INDEX = -100, -200
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")


# -- data ------------------------------------------------------------------------------------------
def build_records(root: Path, n: int, seed: int):
    """Copy the real images under ``root`` and write ``root/records.json`` (LLaVA format) with ``n``
    records drawn in turn from the real ones, shuffled; returns ``(path, description)``. The first turn
    of each repeat ends with `` (copy k)``, so that no record's text is seen twice (mmit remembers the
    ids of recent text pieces, as a real corpus's template prefix repeats; its records do not)."""
    recs = []
    demo = ROOT / "demo_data"
    shutil.copytree(demo / "images", root / "demo")
    for r in json.loads((demo / "llava_demo.json").read_text()):
        if isinstance(r.get("image"), str):  # one image per record, as LLaVA-1.5's dataset reads it
            if (demo / "images" / r["image"]).is_file():  # (the demo names one missing image on purpose)
                recs.append(dict(r, image="demo/" + r["image"]))
        elif "image" not in r:
            recs.append(r)
    where = "demo_data/llava_demo.json"
    flan = SHARED / "vision_flan"
    if (flan / "tasks_web.json").is_file():
        (root / "flan").mkdir()
        for r in json.loads((flan / "tasks_web.json").read_text()):
            name = Path(r["image"]).name
            if (flan / "imgs" / name).is_file():
                shutil.copy(flan / "imgs" / name, root / "flan" / name)
                recs.append({"id": r["id"], "image": "flan/" + name, "conversations": r["conversations"]})
        where += " + ../shared/samples/vision_flan/tasks_web.json (records with their image)"
    out = [dict(copy.deepcopy(recs[i % len(recs)]), id=f"{i}-{recs[i % len(recs)]['id']}") for i in range(n)]
    for i, r in enumerate(out[len(recs):], start=len(recs)):  # a repeat is new text: caches cannot help
        r["conversations"][0]["value"] += f" (copy {i // len(recs)})"
    random.Random(seed).shuffle(out)
    path = root / "records.json"
    path.write_text(json.dumps(out))
    n_img = sum(1 for r in recs if "image" in r)
    return path, f"{len(recs)} real records ({n_img} with an image) from {where}, repeated to {n}"


def clip_processor():
    from mmit.models.encoders.hf_clip import default_clip_image_processor

    return default_clip_image_processor(IMAGE_SIZE)  # what clip-vit-l-14-336 ships: CLIPImageProcessor


# -- LLaVA's way (baseline) --------------------------------------------------------------------------
def expand2square(img, background_color):
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background_color)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def tokenizer_image_token(prompt: str, tokenizer):
    """Ids of ``prompt`` with IMAGE_TOKEN_INDEX for each ``<image>``: every chunk tokenised with
    ``tokenizer(chunk)``; when the first chunk starts with BOS, one BOS leads and the first id of every
    chunk is dropped (LLaVA ``mm_utils.tokenizer_image_token``)."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    drop = int(bool(chunks[0]) and chunks[0][0] == tokenizer.bos_token_id)
    ids = [tokenizer.bos_token_id] if drop else []
    for i, c in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(c[drop:])
    return ids


class LlavaLazyDataset(torch.utils.data.Dataset):
    """The baseline dataset (module docstring): one record -> input_ids, labels, image."""

    def __init__(self, path: Path, media_root: Path, tokenizer, processor):
        self.records = json.loads(Path(path).read_text())
        self.root, self.tokenizer, self.processor = media_root, tokenizer, processor

    def __len__(self):
        return len(self.records)

    def _prompt(self, conversations):
        roles = {"human": "USER", "gpt": "ASSISTANT"}
        if conversations[0]["from"] != "human":
            conversations = conversations[1:]
        text = SYSTEM + " "
        for j, c in enumerate(conversations):
            text += f"{roles[c['from']]}: {c['value']}" + (" " if j % 2 == 0 else "</s>")
        return text

    def __getitem__(self, i):
        from PIL import Image

        rec = self.records[i]
        conv = copy.deepcopy(rec["conversations"])
        image = None
        if "image" in rec:
            image = Image.open(os.path.join(self.root, rec["image"])).convert("RGB")
            image = expand2square(image, tuple(int(x * 255) for x in self.processor.image_mean))
            image = self.processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
            for c in conv:  # preprocess_multimodal: <image> first, then a newline
                if "<image>" in c["value"]:
                    c["value"] = "<image>\n" + c["value"].replace("<image>", "").strip()
        prompt = self._prompt(conv)
        tok = (lambda s: tokenizer_image_token(s, self.tokenizer)) if image is not None else \
            (lambda s: self.tokenizer(s).input_ids)
        input_ids = torch.tensor(tok(prompt), dtype=torch.long)
        target = input_ids.clone()
        # preprocess_v1's masking: the rounds re-tokenised one by one to count their lengths
        sep, total = " ASSISTANT: ", int(input_ids.ne(self.tokenizer.pad_token_id).sum())
        cur = 1
        target[:cur] = IGNORE_INDEX
        for rou in prompt.split("</s>"):
            if not rou:
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len = len(tok(rou))
            instruction_len = len(tok(parts[0] + sep)) - 2
            target[cur:cur + instruction_len] = IGNORE_INDEX
            cur += round_len
        target[cur:] = IGNORE_INDEX
        if cur < MAX_LENGTH and cur != total:
            target[:] = IGNORE_INDEX  # LLaVA's "tokenization mismatch" (the tiny tokenizer adds no BOS)
        out = {"input_ids": input_ids[:MAX_LENGTH], "labels": target[:MAX_LENGTH]}
        if image is None:
            image = torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)
        out["image"] = image
        return out


class LlavaCollator:
    """``DataCollatorForSupervisedDataset``: pad per batch, truncate, attention mask, stacked images."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, instances):
        from torch.nn.utils.rnn import pad_sequence

        ids = pad_sequence([x["input_ids"] for x in instances], batch_first=True, padding_value=self.pad_id)
        labels = pad_sequence([x["labels"] for x in instances], batch_first=True, padding_value=IGNORE_INDEX)
        ids, labels = ids[:, :MAX_LENGTH], labels[:, :MAX_LENGTH]
        return {"input_ids": ids, "labels": labels, "attention_mask": ids.ne(self.pad_id),
                "images": torch.stack([x["image"] for x in instances])}


def run_llava(path, root, tokenizer, batch: int, workers: int):
    """``(samples, seconds to the last batch, seconds with the workers shut down)``."""
    t = time.perf_counter()
    ds = LlavaLazyDataset(path, root, tokenizer, clip_processor())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False,
                                         collate_fn=LlavaCollator(tokenizer.pad_token_id))
    n, total, it = 0, len(ds), iter(loader)
    for b in it:
        n += int(b["input_ids"].shape[0])
        if n >= total:
            break
    last = time.perf_counter() - t
    for _ in it:  # (none left: ends the iterator, which lets its workers go)
        pass
    del it, loader
    return n, last, time.perf_counter() - t


# -- mmit's way --------------------------------------------------------------------------------------
def mmit_processor(tokenizer, draft: bool):
    from mmit.families.llava.processor import LlavaProcessor
    from mmit.models.encoders.preprocess import ImageProcessor, resample_name

    clip = clip_processor()
    transform = ImageProcessor(clip, image_size=IMAGE_SIZE, image_mean=clip.image_mean, image_std=clip.image_std,
                               interpolation=resample_name(clip.resample), aspect_ratio="pad", batched=True)
    pre = LlavaProcessor(tokenizer, "vicuna-v1", transform, NUM_IMAGE_TOKENS,
                         tokenizer.convert_tokens_to_ids("<image>"), MAX_LENGTH)
    if not draft:
        pre.jpeg_draft = None
    return pre


def run_mmit(path, root, tokenizer, batch: int, workers: int, draft: bool):
    """``(samples, seconds to the last batch of epoch 0, seconds with the workers shut down)``."""
    from mmit.config.schema import DataConfig
    from mmit.training.data import SampleStream, batches

    t = time.perf_counter()
    stream = SampleStream(DataConfig(format="llava", path=str(path), media_root=str(root), num_workers=workers), 0)
    n, total = 0, len(stream)
    gen = batches(stream, mmit_processor(tokenizer, draft), batch, num_workers=workers, end_epoch=1)
    for b, epoch, pos in gen:
        n += len(b.ids)
        if epoch or pos >= total:
            break
    last = time.perf_counter() - t
    gen.close()  # the DataLoader's workers shut down
    del gen
    return n, last, time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-draft", action="store_true", help="mmit decodes every JPEG in full")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    from mmit.models.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory(prefix="mmit-bench-dataloader-") as tmp:
        root = Path(tmp)
        path, desc = build_records(root, a.samples, seed=0)
        print(f"records: {desc}")
        print(f"pipeline: {IMAGE_SIZE} px, pad, vicuna-v1, batch {a.batch}, {a.workers} workers, "
              f"mmit JPEG draft {'off' if a.no_draft else 'on'}; cores: {len(os.sched_getaffinity(0))}")
        # warm-up in this process, untimed: lazy imports and caches that forked workers then inherit
        LlavaLazyDataset(path, root, tokenizer, clip_processor())[0]
        from mmit.config.schema import DataConfig
        from mmit.training.data import SampleStream

        mmit_processor(tokenizer, not a.no_draft)(next(SampleStream(
            DataConfig(format="llava", path=str(path), media_root=str(root)), 0).epoch(0)))
        ratios, with_shutdown = [], []
        for r in range(a.rounds):
            n_base, t_base, e_base = run_llava(path, root, tokenizer, a.batch, a.workers)
            n_mmit, t_mmit, e_mmit = run_mmit(path, root, tokenizer, a.batch, a.workers, not a.no_draft)
            base, ours = n_base / t_base, n_mmit / t_mmit
            ratios.append(ours / base)
            with_shutdown.append((n_mmit / e_mmit) / (n_base / e_base))
            print(f"round {r}: llava {base:7.1f} samples/s ({n_base}), mmit {ours:7.1f} samples/s ({n_mmit}), "
                  f"ratio {ours / base:.2f} (worker shutdown included: {with_shutdown[-1]:.2f})", flush=True)
        print(f"with worker shutdown timed: median ratio {statistics.median(with_shutdown):.2f}")
        print(f"mmit / llava samples/s (median of {a.rounds} rounds): {statistics.median(ratios):.2f}  "
              f"(target >= 1.5)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
