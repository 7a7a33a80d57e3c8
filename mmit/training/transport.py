"""How DataLoader workers hand preprocessed items to the trainer: a whole chunk
(``data.batches_per_message`` batches' worth of items, :func:`batches_per_message`) as one
message, its tensors packed into one flat buffer per dtype (pipe bytes when small, shared memory
when large), instead of one shared-memory segment per tensor, which made 2 workers
slower than none on the tiny demo (:mod:`mmit.training.data`, :mod:`mmit.training.batching`)."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Tuple

import torch


class _Slot(NamedTuple):
    """Where :func:`pack_tensors` put a tensor: ``numel`` elements from ``offset`` of the buffer of
    ``dtype``, viewed as ``shape``."""

    dtype: torch.dtype
    offset: int
    shape: Tuple[int, ...]


def batches_per_message(cfg: Any) -> int:
    """``cfg.batches_per_message`` (a ``data`` config section) as an int >= 1 (1 when unset)."""
    return max(1, int(getattr(cfg, "batches_per_message", 1) or 1))


def worker_prefetch(per_message: int) -> int:
    """The DataLoader ``prefetch_factor`` (messages in flight per worker) for messages of
    ``per_message`` batches: 4 batches' worth on a CUDA machine, 2 elsewhere, at least 1 message."""
    return max(1, (4 if torch.cuda.is_available() else 2) // max(1, per_message))


#: Buffers up to this size travel as bytes through the DataLoader's pipe (a copy, microseconds); larger
#: ones as shared memory (one file descriptor passed over a socket: about a millisecond each).
PIPE_BYTES = 4 << 20


def pack_tensors(obj: Any) -> Tuple[Any, Dict[torch.dtype, Any]]:
    """``(structure, buffers)``: ``obj`` (nested dicts, lists and tuples) with every CPU tensor
    replaced by a :class:`_Slot` into ``buffers``, one flat buffer per dtype holding them all back to
    back: a tensor, or its ``bytes`` when at most :data:`PIPE_BYTES`. A DataLoader worker then sends a
    chunk's tensors as a few shared-memory segments or pipe bytes instead of one segment per tensor.
    :func:`unpack_tensors` is the inverse (views into the buffers)."""
    parts: Dict[torch.dtype, List[torch.Tensor]] = {}
    sizes: Dict[torch.dtype, int] = {}

    def walk(x):
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.layout == torch.strided:
            parts.setdefault(x.dtype, []).append(x.reshape(-1))
            offset = sizes.get(x.dtype, 0)
            sizes[x.dtype] = offset + x.numel()
            return _Slot(x.dtype, offset, tuple(x.shape))
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if type(x) is tuple:
            return tuple(walk(v) for v in x)
        return x

    out = walk(obj)
    buffers: Dict[torch.dtype, Any] = {}
    for dt, ps in parts.items():
        n = sizes[dt]
        if n * ps[0].element_size() <= PIPE_BYTES:
            flat = torch.cat(ps)
            buffers[dt] = flat.view(torch.uint8).numpy().tobytes() if n else flat
        else:  # written straight into shared memory: the DataLoader then sends it without a copy
            buffers[dt] = torch.cat(ps, out=_shared_empty(n, dt))
    return out, buffers


def _shared_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 1-D CPU tensor in shared memory (the DataLoader's sharing strategy), so that
    sending it from a worker moves no bytes; a plain tensor where torch lacks the storage call."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:
        return torch.empty(numel, dtype=dtype)
    storage = new_shared(numel * torch.empty(0, dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, (numel,))


def unpack_tensors(obj: Any, buffers: Dict[torch.dtype, Any]) -> Any:
    """``obj`` with every :class:`_Slot` of :func:`pack_tensors` replaced by its tensor (a view into
    ``buffers``: equal values, shape and dtype)."""
    if any(isinstance(b, bytes) for b in buffers.values()):
        buffers = {dt: torch.frombuffer(bytearray(b), dtype=dt) if isinstance(b, bytes) else b
                   for dt, b in buffers.items()}
    return _unpack(obj, buffers)


def _unpack(obj: Any, buffers: Dict[torch.dtype, torch.Tensor]) -> Any:
    if isinstance(obj, _Slot):
        n = 1
        for d in obj.shape:
            n *= d
        return buffers[obj.dtype][obj.offset:obj.offset + n].view(obj.shape)
    if isinstance(obj, dict):
        return {k: _unpack(v, buffers) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, buffers) for v in obj]
    if type(obj) is tuple:
        return tuple(_unpack(v, buffers) for v in obj)
    return obj
