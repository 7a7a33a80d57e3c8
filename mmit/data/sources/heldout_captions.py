"""Caption readers (formats ``heldout-flickr30k`` and ``heldout-nocaps``): InstructBLIP's held-out
captioning sets, scored with CIDEr (Flickr30K 1K Karpathy test, Plummer et al., arXiv 1505.04870;
NoCaps val, Agrawal et al., arXiv 1812.08658). Both names read both layouts:

* LAVIS lists (``flickr30k_test.json``, ``nocaps_val.json``)::

      [{"image": "flickr30k-images/1007129816.jpg", "caption": ["The man with ...", ... x5]}, ...]

  (``caption`` is a str in training files: one caption per record);
* COCO-style caption files (NoCaps' ``nocaps_val_4500_captions.json``, COCO Karpathy)::

      {"images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain", ...}],
       "annotations": [{"image_id": 0, "caption": "A man ...", "id": 0}, ...]}

Images: ``media_root/<image or file_name>`` (default: the annotation folder). Sample: prompt
``A short image description:``, answer turn = the first caption, ``meta["answers"]`` = every
caption (CIDEr / BLEU references); ``meta`` keeps ``image_id`` and NoCaps' ``domain``. Records
or images without captions (LAVIS's NoCaps list keeps them in a separate COCO file) are counted
as ``no-answer`` skips.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, Optional

from mmit.data.normalize import scalar_id
from mmit.data.sample import Sample, SampleError
from mmit.data.sources import FORMATS
from mmit.data.sources.heldout_common import (INSTRUCTBLIP_PROMPTS, check_args, default_root,
                                              eval_sample, load_json, media_item, run)
from mmit.data.stats import SkipCounter


def _records(data, path):
    """``(record_id, {image, captions, extra}, where)`` from either layout."""
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        caps = {}
        annotations = data.get("annotations")
        for a in annotations if isinstance(annotations, list) else []:
            # an id that is a list or an object (a bad file) matches no image: its image is then
            # a bad-id (or no-answer) skip, never a TypeError
            if isinstance(a, dict) and not isinstance(a.get("image_id", []), (list, dict)):
                caps.setdefault(a["image_id"], []).append(a.get("caption"))
        for i, im in enumerate(data["images"]):
            iid = im.get("id", i) if isinstance(im, dict) else i
            rec = {"image": im.get("file_name") if isinstance(im, dict) else None,
                   "captions": [] if isinstance(iid, (list, dict)) else caps.get(iid, []),
                   "image_id": iid,
                   "domain": im.get("domain") if isinstance(im, dict) else None}
            yield iid, rec, f"{path}: image {i} (id {iid!r})"
    elif isinstance(data, list):
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                yield i, r, f"{path}: record {i}"
                continue
            cap = r.get("caption")
            rec = {"image": r.get("image"), "captions": [cap] if isinstance(cap, str) else cap or [],
                   "image_id": r.get("image_id", r.get("img_id")), "domain": r.get("domain")}
            yield r.get("image_id", i), rec, f"{path}: record {i}"
    else:
        raise ValueError(f"{path}: expected a LAVIS caption list or a COCO-style caption file "
                         f"with 'images' and 'annotations'")


def _reader(fmt: str, task: str):
    def read(path, media_root=None, missing: str = "skip", stats: Optional[SkipCounter] = None,
             load_bytes: bool = False, *, allow_absolute: bool = False,
             max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
        path = check_args(fmt, path, missing)
        root = default_root(path, media_root, allow_absolute, max_media_bytes)
        data = load_json(path)

        def convert(rec, where, rid) -> Sample:
            if not isinstance(rec, dict):
                raise SampleError(f"{where}: record is not a JSON object", "invalid-record")
            caps = rec["captions"]
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise SampleError(f"{where}: captions must be strings, got {caps!r}",
                                  "invalid-record")
            caps = [c.strip() for c in caps if c.strip()]
            if not caps:
                raise SampleError(f"{where}: no reference captions", "no-answer")
            media = [media_item("image", rec["image"], root, where, load_bytes)]
            sid = rec["image_id"] if rec["image_id"] is not None else os.path.splitext(
                os.path.basename(rec["image"]))[0]
            extra = {k: rec[k] for k in ("image_id", "domain") if rec.get(k) is not None}
            return eval_sample(scalar_id(sid, where), INSTRUCTBLIP_PROMPTS["caption"], caps[0], media,
                               task=task, source=fmt, where=where, answers=caps, **extra)

        return run(_records(data, path), convert, missing, stats)

    read.__name__ = f"read_{task}"
    read.__doc__ = (f"Read {task} captions (LAVIS list or COCO-style file) as eval samples; see "
                    f"the module docstring. Raises FileNotFoundError, ValueError (malformed JSON "
                    f"or layout), SampleError under missing='error'.")
    return read


read_flickr30k = _reader("heldout-flickr30k", "flickr30k")
read_nocaps = _reader("heldout-nocaps", "nocaps")
FORMATS.register("heldout-flickr30k", read_flickr30k)
FORMATS.register("heldout-nocaps", read_nocaps)
