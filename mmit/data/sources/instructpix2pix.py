"""InstructPix2Pix reader (format name ``instructpix2pix``): input image, edit prompt, edited image.

InstructPix2Pix: "InstructPix2Pix: Learning to Follow Image Editing Instructions", Brooks et al.,
arXiv 2211.09800. Reference code: timothybrooks/instruct-pix2pix ``edit_dataset.py``
(``EditDataset``) @ 0dffd1e, and the diffusers example ``train_instruct_pix2pix.py`` (parquet
columns). Formats: DATASETS.md §8.

Two layouts, chosen from ``path``:

1. **Seeds layout** (``path`` = the dataset folder holding ``seeds.json``, or ``seeds.json``
   itself), as written by ``dataset_creation/generate_img_dataset.py``::

       seeds.json                 [["0000000", [<seed>, <seed>, ...]], ...]
       0000000/prompt.json        {"caption"|"input": ..., "edit": ..., "output": ..., "url": ...}
       0000000/<seed>_0.jpg       input image          0000000/<seed>_1.jpg   edited image
       0000000/metadata.jsonl     optional, per seed: {"seed", "p2p_threshold", "cfg_scale", ...}

   One record per (folder, seed): every seed is a valid pair for the instruction. Without
   ``seeds.json`` the sub-folders holding a ``prompt.json`` are read, their seeds taken from the
   ``<seed>_0.jpg`` files. Image folders resolve against ``media_root`` (default: the dataset
   folder). :attr:`Sample.id` = ``"<folder>/<seed>"``.
2. **Parquet** (``path`` = a ``.parquet`` file or a folder of them, read in name order with
   pyarrow in batches): HF ``fusing/instructpix2pix-1000-samples`` columns ``input_image`` / ``edit_prompt`` /
   ``edited_image``, or ``timbrooks/instructpix2pix-clip-filtered`` ``original_image`` /
   ``edit_prompt`` / ``edited_image`` (+ ``original_prompt`` / ``edited_prompt`` captions). Image
   cells are binary or HF ``{bytes, path}`` structs (a struct with only a path is read from
   ``media_root``). Other names: ``columns={"input": ..., "edit": ..., "edited": ...}``.
   :attr:`Sample.id` = ``"<file stem>/<row>"`` (0-based row in that file).

Sample convention (the InstructPix2Pix trainer relies on it)::

    media = [Media("image", meta={"role": "input"}), Media("image", meta={"role": "edited"})]
    turns = [Turn("user", "<image>\\n" + edit_prompt), Turn("assistant", "<image>")]
    task = "image-editing"; source = "instructpix2pix"

The edit prompt is kept as written. ``meta``: ``input_caption`` (``caption`` or ``input``: GPT-
generated and human-written prompts differ), ``output_caption``, ``url``, ``seed``, ``folder`` and
``generation`` (that seed's ``metadata.jsonl`` line) where known; parquet: ``file``, ``row``.
Images from parquet always carry their bytes in ``Media.data`` (``path`` None); seeds-layout images
are files (``load_bytes`` reads them unchanged).

Skip reasons: ``missing-prompt`` (no ``prompt.json``: every seed of that folder),
``invalid-record`` (no/empty ``edit``, malformed ``prompt.json``, null image cell),
``missing-media``, ``undecodable-image`` (image bytes that are not an image),
``media-outside-root`` (a seed folder or image file whose real location is outside ``media_root``:
every seed of such a folder), ``media-too-large``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from mmit.constants import IMAGE_PLACEHOLDER
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.sources import FORMATS
from mmit.data.normalize import check_missing_policy
from mmit.data.record_io import load_json_document
from mmit.data.media_resolve import MediaRoot, inside_root, media_policy, outside_error
from mmit.data.sources._media_helpers import (attach_bytes, attach_file, image_cell_bytes, report,
                                              validated)
from mmit.data.stats import SkipCounter

PathLike = Union[str, "os.PathLike[str]"]
#: Column names tried, in order, for each part of a parquet row.
PARQUET_COLUMNS: Dict[str, Tuple[str, ...]] = {
    "input": ("input_image", "original_image"),
    "edit": ("edit_prompt", "edit", "instruction"),
    "edited": ("edited_image", "output_image"),
    "input_caption": ("original_prompt", "input_prompt", "input_caption"),
    "output_caption": ("edited_prompt", "output_prompt", "output_caption"),
}


def edit_sample(sid: str, edit: Any, inp: Media, out: Media, meta: Dict[str, Any],
                where: str) -> Sample:
    """The convention sample for one edit (module docstring); ``inp``/``out`` get their role.

    Raises :class:`SampleError` ``invalid-record`` for a missing or blank edit prompt."""
    if not isinstance(edit, str) or not edit.strip():
        raise SampleError(f"{where}: missing or empty edit prompt ({edit!r})", "invalid-record")
    inp.meta["role"], out.meta["role"] = "input", "edited"
    turns = [Turn("user", f"{IMAGE_PLACEHOLDER}\n{edit}"), Turn("assistant", IMAGE_PLACEHOLDER)]
    return validated(Sample(id=sid, turns=turns, media=[inp, out], task="image-editing",
                            source="instructpix2pix", meta=meta), where)


# -- seeds layout ---------------------------------------------------------------------------------

def _seed_list(dataset: str, seeds_json: Optional[str]) -> List[Tuple[str, List[str]]]:
    if seeds_json is None:
        out = []
        for d in sorted(os.listdir(dataset)):
            folder = os.path.join(dataset, d)
            if os.path.isfile(os.path.join(folder, "prompt.json")):
                seeds = sorted(f[:-6] for f in os.listdir(folder) if f.endswith("_0.jpg"))
                out.append((d, seeds))
        if not out:
            raise FileNotFoundError(f"{dataset}: no seeds.json and no sub-folder with a "
                                    f"prompt.json (not an InstructPix2Pix dataset folder)")
        return out
    data = load_json_document(seeds_json)  # one-line ValueError: malformed, too deep, not UTF-8
    ok = isinstance(data, list) and all(
        isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], list)
        for x in data)
    if not ok:
        raise ValueError(f"{seeds_json}: expected [[folder, [seed, ...]], ...]")
    return [(d, [str(s) for s in seeds]) for d, seeds in data]


def _generation_meta(folder: str) -> Dict[str, Dict[str, Any]]:
    path = os.path.join(folder, "metadata.jsonl")
    out: Dict[str, Dict[str, Any]] = {}
    if os.path.isfile(path):
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):  # malformed, too deep
                    continue  # optional provenance: a broken line only loses that seed's meta
                if isinstance(rec, dict) and "seed" in rec:
                    out[str(rec["seed"])] = rec
    return out


def _read_prompt(folder: str, where: str) -> Dict[str, Any]:
    path = os.path.join(folder, "prompt.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            prompt = json.load(f)
    except FileNotFoundError:
        raise SampleError(f"{where}: prompt.json not found: {path}", "missing-prompt") from None
    except (OSError, ValueError) as e:  # also UnicodeDecodeError
        raise SampleError(f"{where}: unreadable prompt.json {path}: {e}",
                          "invalid-record") from None
    except RecursionError:
        raise SampleError(f"{where}: {path} is nested too deep for the JSON parser", "too-deep") from None
    if not isinstance(prompt, dict):
        raise SampleError(f"{where}: {path} is not a JSON object", "invalid-record")
    return prompt


def _iter_seeds(path: str, root: str, missing: str, counter: SkipCounter, load_bytes: bool,
                seeds: List[Tuple[str, List[str]]]) -> Iterator[Sample]:
    for d, seed_ids in seeds:
        folder = os.path.join(root, d)
        where = f"{path}: folder {d!r}"
        try:
            if not isinstance(d, str) or not d.strip() or "\x00" in d:
                raise SampleError(f"{where}: folder name must be a non-empty string without NUL "
                                  f"bytes", "invalid-record")
            if not media_policy(root)[0] and not inside_root(folder, root):
                raise outside_error(where, d, root, folder)  # its prompt.json is not read either
            prompt = _read_prompt(folder, where)
        except SampleError as e:
            if missing == "error" and seed_ids:
                raise
            counter.add(e.reason, d, str(e), n=len(seed_ids))
            continue
        gen_meta = _generation_meta(folder)
        base = {"folder": d, "url": prompt.get("url"),
                "input_caption": prompt.get("input", prompt.get("caption")),
                "output_caption": prompt.get("output")}
        base = {k: v for k, v in base.items() if v is not None}
        for seed in seed_ids:
            sid, swhere = f"{d}/{seed}", f"{where} seed {seed}"
            try:
                inp = Media("image", path=os.path.join(folder, f"{seed}_0.jpg"))
                out = Media("image", path=os.path.join(folder, f"{seed}_1.jpg"))
                meta = dict(base, seed=seed)
                if seed in gen_meta:
                    meta["generation"] = gen_meta[seed]
                sample = edit_sample(sid, prompt.get("edit"), inp, out, meta, swhere)
                for m in sample.media:
                    attach_file(m, swhere, load_bytes, root)
            except SampleError as e:
                report(e, missing, counter, sid)
                continue
            yield sample


# -- parquet --------------------------------------------------------------------------------------

def _parquet_columns(file: str, names: List[str], override: Mapping[str, str]) -> Dict[str, str]:
    cols: Dict[str, str] = {}
    for part, cands in PARQUET_COLUMNS.items():
        want = (override[part],) if part in override else cands
        found = next((c for c in want if c in names), None)
        if found is not None:
            cols[part] = found
        elif part in ("input", "edit", "edited"):
            raise ValueError(f"{file}: no {part} column (looked for {', '.join(want)}; columns: "
                             f"{', '.join(names)}); pass columns={{{part!r}: NAME}}")
    return cols


def _media_from_cell(cell: Any, where: str, root: str, load_bytes: bool) -> Media:
    data, path = image_cell_bytes(cell, where, root)
    m = Media("image", path=path)
    if data is not None:
        attach_bytes(m, data, where, root)
    else:
        attach_file(m, where, load_bytes, root)
    return m


def _unreadable(file: str, e: BaseException) -> ValueError:
    """The one-line error for a parquet file pyarrow cannot read (truncated, not parquet, a
    corrupt page); pyarrow's own messages do not name the file."""
    return ValueError(f"{file}: unreadable parquet file: "
                      f"{' '.join(str(e).split()) or type(e).__name__}")


def _parquet_batches(file: str, columns: List[str]) -> Iterator[List[Any]]:
    """The rows of ``file`` in batches of 64; any pyarrow failure is :func:`_unreadable`. A row
    holding a string that is not UTF-8 (pyarrow does not check when it reads) is a
    ``bad-encoding`` :class:`SampleError` in its place, for the caller to count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(file).iter_batches(batch_size=64, columns=columns)
        start = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            try:
                rows: List[Any] = batch.to_pylist()
            except UnicodeDecodeError:
                rows = []
                for i in range(batch.num_rows):
                    try:
                        rows.extend(batch.slice(i, 1).to_pylist())
                    except UnicodeDecodeError as e:
                        rows.append(SampleError(f"{file}: row {start + i}: a string that is not "
                                                f"UTF-8: {e}", "bad-encoding"))
            start += batch.num_rows
            yield rows
    except (OSError, pa.lib.ArrowException) as e:
        raise _unreadable(file, e) from None


def _iter_parquet(files: List[str], columns: List[Dict[str, str]], root: str, missing: str,
                  counter: SkipCounter, load_bytes: bool) -> Iterator[Sample]:
    for file, cols in zip(files, columns):
        stem = os.path.splitext(os.path.basename(file))[0]
        row = 0
        for batch in _parquet_batches(file, sorted(set(cols.values()))):
            for rec in batch:
                sid, where = f"{stem}/{row}", f"{file}: row {row}"
                try:
                    if isinstance(rec, SampleError):
                        raise rec
                    inp = _media_from_cell(rec[cols["input"]], f"{where} {cols['input']}", root,
                                           load_bytes)
                    out = _media_from_cell(rec[cols["edited"]], f"{where} {cols['edited']}", root,
                                           load_bytes)
                    meta = {"file": os.path.basename(file), "row": row}
                    for part in ("input_caption", "output_caption"):
                        if part in cols and rec[cols[part]] is not None:
                            meta[part] = rec[cols[part]]
                    sample = edit_sample(sid, rec[cols["edit"]], inp, out, meta, where)
                except SampleError as e:
                    report(e, missing, counter, sid)
                    row += 1
                    continue
                row += 1
                yield sample


def read_instructpix2pix(path: PathLike, media_root: Optional[PathLike] = None,
                         missing: str = "skip", stats: Optional[SkipCounter] = None,
                         load_bytes: bool = False, *,
                         columns: Optional[Mapping[str, str]] = None,
                         allow_absolute: bool = False,
                         max_media_bytes: Optional[Dict[str, int]] = None) -> Iterator[Sample]:
    """Read an InstructPix2Pix dataset (seeds layout or parquet) as image-editing samples.

    Args:
        path: dataset folder / ``seeds.json`` (seeds layout), or a ``.parquet`` file / a folder of
            ``.parquet`` files.
        media_root: seeds layout: the folder holding the numbered sub-folders (default: the
            dataset folder). Parquet: the folder struct-cell paths resolve against.
        missing: ``"skip"`` counts unusable records in ``stats`` by reason; ``"error"`` raises.
        stats: skip counter (a fresh one when None).
        load_bytes: read seeds-layout image files into ``Media.data`` unchanged (parquet images
            always carry their bytes); ``Media.ext`` is sniffed from content.
        columns: parquet column names overriding :data:`PARQUET_COLUMNS` (keys ``input``,
            ``edit``, ``edited``, ``input_caption``, ``output_caption``).
        allow_absolute: accept image files (and seed folders) outside ``media_root``: absolute
            struct-cell paths, ``..``, symlinks leading out; by default ``media-outside-root``.
        max_media_bytes: per-kind size caps in bytes lowering
            :data:`~mmit.data.media.MAX_MEDIA_BYTES` (``media-too-large`` skips).

    Returns:
        A lazy iterator of :class:`Sample` (convention in the module docstring).

    Raises:
        FileNotFoundError: ``path`` missing / not an InstructPix2Pix layout (at call time).
        ValueError: malformed ``seeds.json``, parquet without the needed columns (names the file
            and the columns found), bad ``missing`` or ``max_media_bytes``.
        SampleError: under ``missing="error"``, naming the file/folder and the seed or row.
    """
    check_missing_policy(missing)
    path = os.fspath(path)
    counter = stats if stats is not None else SkipCounter()
    if not os.path.exists(path):
        raise FileNotFoundError(f"InstructPix2Pix dataset not found: {path}")
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.endswith(".parquet"))
    else:
        files = [path] if path.endswith(".parquet") else []
    if files:
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = os.fspath(media_root) if media_root is not None else os.path.dirname(
            os.path.abspath(files[0]))
        root = MediaRoot(root, allow_absolute, max_media_bytes)
        cols = []
        for f in files:
            try:
                names = pq.read_schema(f).names
            except (OSError, pa.lib.ArrowException) as e:
                raise _unreadable(f, e) from None
            cols.append(_parquet_columns(f, names, columns or {}))
        return _iter_parquet(files, cols, root, missing, counter, load_bytes)
    if os.path.isdir(path):
        dataset = path
        seeds_json = os.path.join(path, "seeds.json")
        seeds_json = seeds_json if os.path.isfile(seeds_json) else None
    else:
        dataset, seeds_json = os.path.dirname(os.path.abspath(path)), path
    root = MediaRoot(os.fspath(media_root) if media_root is not None else dataset,
                     allow_absolute, max_media_bytes)
    seeds = _seed_list(dataset, seeds_json)
    return _iter_seeds(seeds_json or dataset, root, missing, counter, load_bytes, seeds)


FORMATS.register("instructpix2pix", read_instructpix2pix)
