"""An lmms-eval model for any mmit checkpoint: ``lmms-eval --model mmit --model_args checkpoint=DIR``.

lmms-eval (EvolvingLMMs-Lab/lmms-eval) finds the model through the entry-point group
``lmms_eval.models`` (its ``ModelRegistryV2.load_entrypoint_manifests``)::

    [project.entry-points."lmms_eval.models"]
    mmit = "mmit.integrations.lmms:manifest"

The class implements lmms-eval's ``lmms`` interface through mmit's family inference contract
(:mod:`mmit.inference`), so families without a transformers class (Flamingo, Video-LLaMA,
InstructBLIP as trained here) are evaluated the same way as LLaVA:

* ``generate_until``: the request's context becomes one user turn with a placeholder per visual
  (:func:`mmit.inference.prompt_sample`: ``<image>\\n`` in front unless the context has its markers),
  rendered by the family (its conversation template), decoded greedily unless the task's
  ``generation_kwargs`` ask for sampling (``temperature > 0`` / ``do_sample``), cut at the first of
  the task's ``until`` strings and the family's stop strings.
* ``loglikelihood``: ``(loss, greedy)`` of the continuation's tokens as the assistant's answer to
  that turn (:meth:`~mmit.data.processor.Processor.candidate_ids`, the tokens ``mmit eval``'s ``rank``
  scorer scores, without end-of-turn tokens). The loss is the NEGATIVE log-likelihood (natural
  log), summed over the tokens (``reduction=sum``, default: the same ranking as ``mmit eval``'s
  ``rank: {reduction: sum}``) or averaged (``reduction=mean``, what ``llava_hf`` returns): lmms-eval's
  models return a loss and its ``multiple_choice`` scoring picks the ``argmin``. ``greedy``: every
  continuation token is the argmax. One full forward pass per request.

The other route, for LLaVA-shaped checkpoints only: ``mmit export --format hf-llava --checkpoint RUN
--output HF`` writes a ``LlavaForConditionalGeneration`` folder that lmms-eval's own model reads,
``lmms-eval --model llava_hf --model_args pretrained=HF,device=cpu,device_map=cpu,dtype=float32``
(lmms-eval 0.7.3: its ``llava_hf`` module imports ``decord`` at the top, so install that too; its
loglikelihood path calls the processor without images, which transformers 5 refuses, so only
``generate_until`` tasks run there). tests/test_lmms_eval_adapter.py checks that both routes give
``mmit eval``'s answers.

Visuals (``doc_to_visual``): PIL images, or file paths (``.mp4``/``.avi``/``.mkv``/``.webm``/``.mov``
= video, ``.wav``/``.mp3``/``.flac``/``.ogg``/``.m4a`` = audio, anything else = image). Model
arguments: ``checkpoint`` (required: a checkpoint or run folder), ``device`` (``cpu``, ``cuda``...;
default cuda when available), ``dtype`` (``float32``, ``bfloat16``, ``float16``), ``batch_size``
(accepted, requests run one at a time), ``reduction`` (``sum`` or ``mean``: the loglikelihood
loss), ``trust_remote_code``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

VIDEO_EXT = (".mp4", ".avi", ".mkv", ".webm", ".mov")
AUDIO_EXT = (".wav", ".mp3", ".flac", ".ogg", ".m4a")


def manifest():
    """The lmms-eval ``ModelManifest`` of ``mmit`` (the entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mmit", simple_class_path="mmit.integrations.lmms.MmitLMM")


def _flatten(xs) -> list:
    out = []
    for x in xs if isinstance(xs, (list, tuple)) else [xs]:
        if isinstance(x, (list, tuple)):
            out.extend(_flatten(x))
        elif x is not None:
            out.append(x)
    return out


def media_of(visuals: Sequence[Any], where: str) -> Dict[str, list]:
    """``{"image": [...], "video": [...], "audio": [...]}`` of lmms-eval visuals (module docstring).
    Raises ``ValueError`` naming ``where`` for a visual of another type (e.g. an audio array)."""
    from PIL import Image

    media: Dict[str, list] = {"image": [], "video": [], "audio": []}
    for v in _flatten(visuals):
        if isinstance(v, Image.Image):
            media["image"].append(v.convert("RGB"))
        elif isinstance(v, (str, os.PathLike)):
            ext = os.path.splitext(os.fspath(v))[1].lower()
            media["video" if ext in VIDEO_EXT else "audio" if ext in AUDIO_EXT else "image"].append(os.fspath(v))
        else:
            raise ValueError(f"{where}: mmit takes PIL images or media file paths as visuals, not {type(v).__name__}")
    return media


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"mmit: dtype {name!r} is not one of {', '.join(table)}")
    return table[name]


def _truthy(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


class MmitLMM(lmms):
    """lmms-eval's ``lmms`` over an mmit checkpoint (module docstring). Raises what
    :func:`mmit.inference.load_for_inference` raises (a missing checkpoint, a family without text)."""

    is_simple = True

    def __init__(self, checkpoint: str = "", device: Optional[str] = None, dtype: str = "float32",
                 batch_size: int | str = 1, reduction: str = "sum", trust_remote_code: bool | str = False,
                 **kwargs) -> None:
        super().__init__()
        from mmit.inference import load_for_inference

        if not checkpoint:
            raise ValueError("mmit: pass --model_args checkpoint=DIR (an mmit checkpoint or run folder)")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"mmit: reduction {reduction!r} is not sum or mean")
        if kwargs:
            raise TypeError(f"mmit: unknown model_args {', '.join(sorted(kwargs))} (takes checkpoint, device, dtype, "
                            "batch_size, reduction, trust_remote_code)")
        self.checkpoint, self.reduction = checkpoint, reduction
        model, processor, cfg = load_for_inference(checkpoint, _dtype(str(dtype)),
                                                   trust_remote_code=_truthy(trust_remote_code))
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor, self.cfg = model.to(dev).eval(), processor, cfg
        self.batch_size_per_gpu = int(batch_size)

    # -- lmms-eval plumbing ------------------------------------------------------------------
    def _doc(self, doc_id, task, split):
        return self.task_dict[task][split][doc_id]

    def _prompt(self, context: str, doc_to_visual, doc_id, task, split):
        """``(turns, decoded media)`` of one request."""
        from mmit.inference import decode_prompt_media, prompt_sample

        where = f"lmms-eval task {task!r} doc {doc_id}"
        visuals = doc_to_visual(self._doc(doc_id, task, split)) if doc_to_visual is not None else []
        sample, given = prompt_sample(context, media_of(visuals, where), sample_id=f"{task}/{doc_id}")
        return sample.turns, decode_prompt_media(self.processor, sample, given)

    # -- generate ----------------------------------------------------------------------------
    @staticmethod
    def generate_kwargs(gen_kwargs: Dict[str, Any]) -> Tuple[int, Dict[str, Any], List[str]]:
        """``(max_new_tokens, transformers keywords, until strings)`` of an lmms-eval request's
        ``generation_kwargs``: greedy unless ``do_sample`` or ``temperature > 0``."""
        g = dict(gen_kwargs or {})
        until = g.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(g.pop("max_new_tokens", 128) or 128)
        temperature = float(g.get("temperature") or 0.0)
        kwargs: Dict[str, Any] = {}
        if _truthy(g.get("do_sample", False)) or temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature or 1.0)
            if g.get("top_p") is not None:
                kwargs["top_p"] = float(g["top_p"])
        if int(g.get("num_beams") or 1) > 1:
            kwargs["num_beams"] = int(g["num_beams"])
        return max_new, kwargs, until

    def generate_until(self, requests: List[Instance]) -> List[str]:
        from mmit.inference import generate_turns

        out = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            turns, media = self._prompt(context, doc_to_visual, doc_id, task, split)
            max_new, kwargs, until = self.generate_kwargs(gen_kwargs)
            text = generate_turns(self.model, self.processor, turns, media, max_new, **kwargs).text
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError("mmit: multi-round generation is not supported; use generate_until tasks")

    # -- loglikelihood -----------------------------------------------------------------------
    @torch.no_grad()
    def continuation_logprob(self, turns, media, continuation: str, where: str) -> Tuple[float, bool, int]:
        """``(sum of log-probabilities, greedy?, #tokens)`` of ``continuation``'s tokens as the answer
        to ``turns`` (one forward pass over prompt + continuation)."""
        from mmit.models.interface import model_device

        p = self.processor
        prompt = p.prompt(list(turns), list(media), where)
        n = int(prompt["input_ids"].shape[0])
        cont = p.candidate_ids(list(turns), continuation, False, prompt, where)
        batch = p.collate_prompts([p.append(prompt, cont)]).to(model_device(self.model))
        logits = self.model.prefill(batch, all_logits=True).logits[0].float().log_softmax(-1)
        rows = logits[n - 1:n - 1 + len(cont)]
        ids = torch.tensor(cont, device=rows.device)
        lp = rows.gather(-1, ids[:, None]).squeeze(-1)
        return float(lp.sum()), bool((rows.argmax(-1) == ids).all()), len(cont)

    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        out = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            continuation = target if isinstance(target, str) else target(self._doc(doc_id, task, split))
            turns, media = self._prompt(context, doc_to_visual, doc_id, task, split)
            total, greedy, n = self.continuation_logprob(turns, media, continuation, f"{task}/{doc_id}")
            out.append(_passes_through((-total / (n if self.reduction == "mean" else 1), greedy)))
        return out


def _passes_through(pair: Tuple[float, bool]):
    """``pair`` as lmms-eval's evaluator hands it on to ``process_results``. lmms-eval 0.7.3 runs every
    response through ``unwrap_generation_output``, which turns a ``(float, bool)`` tuple into its
    ``str`` (so ``multiple_choice`` fails with "too many values to unpack" for every model); its
    ``GenerationResult`` is passed on unchanged, so the pair travels inside one there. Where the
    installed version keeps tuples, the plain tuple is returned."""
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:
        return pair
    if unwrap_generation_output(pair)[0] == pair:
        return pair
    return GenerationResult(text=pair)  # type: ignore[arg-type]
