"""The two ways a model answers an eval prompt: ``generate`` (free text) and ``rank`` (vocabulary ranking).

**Model interface.** Both scorers talk to the model only through this small contract, which
``mmit.models.multimodal.MultimodalLM`` (LLaVA, arXiv 2304.08485) implements and any other family
(e.g. InstructBLIP, arXiv 2305.06500) can implement too (``docs/evaluation.md``):

* ``image_token_id`` / ``num_image_tokens``: each ``<image>`` of the prompt becomes
  ``num_image_tokens`` copies of ``image_token_id`` (:func:`mmit.data.collate.expand_image_tokens`);
* ``model.image_processor(images)`` or ``model.vision_tower.image_processor(images)``:
  ``list[PIL.Image]`` -> FloatTensor ``[I,3,H,W]``;
* ``embed(input_ids [B,T], pixel_values [I,3,H,W] | None) -> inputs_embeds [B,T,D]``: the media
  spliced into the prompt's embeddings (this is where the media is encoded);
* ``llm``: a decoder-only HF causal LM taking ``inputs_embeds`` / ``input_ids``,
  ``attention_mask``, ``position_ids`` and ``past_key_values`` (a ``transformers.DynamicCache``);
* ``generate(input_ids, attention_mask, pixel_values, **generate_kwargs) -> LongTensor [B,new]``
  (left-padded prompts, only the new ids returned).

**rank** (InstructBLIP §2.5 "vocabulary ranking"; LAVIS ``Blip2VicunaInstruct.predict_class``): the
score of a candidate is the log-likelihood of its tokens after the prompt and media, summed
(``sum``, as LAVIS) or averaged per token (``mean``). Unlike LAVIS, which repeats the image and
prompt once per candidate, the prefix (media + prompt) runs ONCE per sample: its KV cache is kept,
gathered to one row per candidate (``DynamicCache.batch_select_indices``) and all candidates of all
samples in the batch are scored in ONE forward pass over the cached prefix; single-token candidates
need no second pass at all. The winner is the highest score; ties go to the lowest index.
"""

from __future__ import annotations

import copy
import re
from typing import List, Optional, Sequence, Tuple

import torch

from mmit.data.collate import expand_image_tokens
from mmit.evaluation.config import GenerateConfig, RankConfig
from mmit.evaluation.data import EvalItem
from mmit.templates import get_template, stop_token_ids
from mmit.templates.labels import encode_prompt

_WS = re.compile(r"\s+")


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def image_processor(model):
    """The model's ``list[PIL.Image] -> FloatTensor [I,3,H,W]``."""
    proc = getattr(model, "image_processor", None)
    return proc if proc is not None else model.vision_tower.image_processor


def prompt_ids(model, tokenizer, template: str, item: EvalItem) -> List[int]:
    """The prompt's token ids with every ``<image>`` expanded to ``num_image_tokens`` copies."""
    ids = encode_prompt(tokenizer, item.turns, template)
    ids, _, _ = expand_image_tokens(ids, None, model.image_token_id, model.num_image_tokens)
    return ids


def pixel_values(model, items: Sequence[EvalItem]) -> Optional[torch.Tensor]:
    """FloatTensor ``[I,3,H,W]``: the images of ``items`` in order, or None when there are none."""
    images = [im for it in items for im in it.images]
    if not images:
        return None
    return image_processor(model)(images).to(_device(model))


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """LongTensors ``input_ids [B,T]`` and ``attention_mask [B,T]`` (1 = token), padded on the left."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids, mask


def _forward_params(llm) -> set:
    import inspect

    return set(inspect.signature(type(llm).forward).parameters)


def _cache_kw(llm) -> str:
    """transformers >= 5.2x names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    return "cache" if "cache" in _forward_params(llm) else "past_key_values"


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# -- generate ----------------------------------------------------------------------------------
@torch.no_grad()
def generate_batch(model, tokenizer, template: str, items: Sequence[EvalItem], cfg: GenerateConfig
                   ) -> List[Tuple[str, List[int]]]:
    """Decode an answer for each item in one batched ``generate`` call (left padding, KV cache,
    greedy or beam search per ``cfg``). Returns ``(text, new ids up to and including the first
    stop token)`` per item; text is decoded without special tokens and stripped."""
    dev = _device(model)
    ids, mask = left_pad([prompt_ids(model, tokenizer, template, it) for it in items], _pad_id(tokenizer))
    stops = stop_token_ids(tokenizer, template)
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "do_sample": False, "num_beams": cfg.num_beams,
              "eos_token_id": stops, "pad_token_id": _pad_id(tokenizer)}
    if cfg.num_beams > 1:
        kwargs["length_penalty"] = cfg.length_penalty
    out = model.generate(ids.to(dev), mask.to(dev), pixel_values(model, items), **kwargs)
    results = []
    for row in out.tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        row = row if cut is None else row[:cut + 1]
        results.append((tokenizer.decode(row, skip_special_tokens=True).strip(), row))
    return results


# -- rank --------------------------------------------------------------------------------------
def candidate_ids(tokenizer, template: str, item: EvalItem, candidate: str, score_end_of_turn: bool,
                  prompt: Optional[List[int]] = None) -> List[int]:
    """Token ids of ``candidate`` as the assistant's answer right after the prompt of ``item``.

    Tokenized in context (the prompt followed by the answer, rendered with the conversation
    template), so the ids are exactly those the model learned for this answer. Without
    ``score_end_of_turn`` the template's end-of-turn tokens (``</s>``, ``<|im_end|>``) are left out.
    ``prompt``: the prompt's ids before image expansion (computed when None).

    Raises ``ValueError`` when the template tokenizes prompt + answer so that the prompt's ids are
    not a prefix (the boundary merged), or the candidate has no token.
    """
    from mmit.data.sample import Turn

    tpl = get_template(template)
    if prompt is None:
        prompt = encode_prompt(tokenizer, item.turns, template)
    msgs = [{"role": t.role, "content": t.content} for t in list(item.turns) + [Turn("assistant", candidate)]]
    out = tokenizer.apply_chat_template(msgs, chat_template=tpl.chat_template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, amask = list(out["input_ids"]), list(out["assistant_masks"])
    n = len(prompt)
    if ids[:n] != list(prompt):
        raise ValueError(f"sample {item.sample_id!r}: with template {template!r} the prompt's tokens change when "
                         f"the answer {candidate!r} follows; cannot rank in context")
    last = max((j for j, m in enumerate(amask) if m), default=len(ids) - 1)
    cont = ids[n:last + 1]
    if not score_end_of_turn:
        want = _norm(candidate)
        for k in range(1, len(cont) + 1):
            if _norm(tokenizer.decode(cont[:k], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)) == want:
                cont = cont[:k]
                break
    if not cont:
        raise ValueError(f"sample {item.sample_id!r}: candidate {candidate!r} has no tokens")
    return cont


@torch.no_grad()
def rank_batch(model, tokenizer, template: str, items: Sequence[EvalItem], cfg: RankConfig,
               memo: Optional[dict] = None) -> List[List[float]]:
    """Scores (log-likelihoods, natural log) of every candidate of every item, ``cfg.reduction``
    ``sum`` or ``mean`` over the candidate's tokens.

    The media + prompt prefix of all items runs in one left-padded forward pass with a KV cache;
    the cache is gathered to one row per (item, candidate) and all candidates are scored in one
    more forward pass (skipped when every candidate is one token), in chunks of ``cfg.max_rows``
    candidate rows. See the module docstring. ``memo``: a dict reused across calls with the same
    tokenizer and template that caches candidate tokenization per (prompt ids, candidate).
    """
    dev = _device(model)
    prompts_raw = [encode_prompt(tokenizer, it.turns, template) for it in items]
    prompts = [expand_image_tokens(p, None, model.image_token_id, model.num_image_tokens)[0] for p in prompts_raw]
    memo = {} if memo is None else memo

    def cont_ids(it, c, p):
        key = (template, tuple(p), c, cfg.score_end_of_turn)
        if key not in memo:
            memo[key] = candidate_ids(tokenizer, template, it, c, cfg.score_end_of_turn, p)
        return memo[key]

    conts = [[cont_ids(it, c, p) for c in it.candidates] for it, p in zip(items, prompts_raw)]
    ids, mask = left_pad(prompts, _pad_id(tokenizer))
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    embeds = model.embed(ids, pixel_values(model, items))
    extra = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model.llm) else {}
    out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
    first = out.logits[:, -1].float().log_softmax(-1)  # [B,V]: the distribution of each answer's 1st token

    rows = [(i, c) for i, cs in enumerate(conts) for c in cs]
    L = max(len(c) for _, c in rows)
    R = len(rows)
    idx = torch.tensor([i for i, _ in rows], dtype=torch.long, device=dev)
    C = torch.full((R, L), _pad_id(tokenizer), dtype=torch.long, device=dev)
    cmask = torch.zeros((R, L), dtype=torch.long, device=dev)
    for r, (_, c) in enumerate(rows):
        C[r, :len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[r, :len(c)] = 1
    tok = torch.zeros((R, L), dtype=torch.float32, device=dev)
    tok[:, 0] = first[idx, C[:, 0]]
    if L > 1:
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        prefix_len = mask.sum(-1)
        step = max(1, int(cfg.max_rows))
        for a in range(0, R, step):
            b = min(R, a + step)
            # one copy of its sample's prefix per candidate row (a private copy when chunked)
            c = cache if (a == 0 and b == R) else copy.deepcopy(cache)
            c.batch_select_indices(idx[a:b])
            am = torch.cat([mask[idx[a:b]], cmask[a:b, :L - 1]], dim=1)
            cpos = prefix_len[idx[a:b]].unsqueeze(1) + torch.arange(L - 1, device=dev).unsqueeze(0)
            logits = model.llm(input_ids=C[a:b, :L - 1], attention_mask=am, position_ids=cpos, use_cache=True,
                               **{_cache_kw(model.llm): c}).logits.float()  # [rows,L-1,V]
            picked = logits.gather(-1, C[a:b, 1:].unsqueeze(-1)).squeeze(-1)
            tok[a:b, 1:] = picked - logits.logsumexp(-1)
    tok = tok * cmask
    total = tok.sum(-1)
    if cfg.reduction == "mean":
        total = total / cmask.sum(-1)
    scores = total.tolist()
    out_scores, r = [], 0
    for cs in conts:
        out_scores.append(scores[r:r + len(cs)])
        r += len(cs)
    return out_scores


@torch.no_grad()
def rank_full_forward(model, tokenizer, template: str, item: EvalItem, cfg: RankConfig) -> List[float]:
    """The reference ranking: one full forward pass (media + prompt + candidate, no cache) per
    candidate, as LAVIS does. Same scores as :func:`rank_batch`; used by tests and ``bench/rank.py``."""
    dev = _device(model)
    raw = encode_prompt(tokenizer, item.turns, template)
    p = expand_image_tokens(raw, None, model.image_token_id, model.num_image_tokens)[0]
    pv = pixel_values(model, [item])
    scores = []
    for c in item.candidates:
        cont = candidate_ids(tokenizer, template, item, c, cfg.score_end_of_turn, raw)
        ids = torch.tensor([p + cont], dtype=torch.long, device=dev)
        logits = model.llm(inputs_embeds=model.embed(ids, pv)).logits[0].float().log_softmax(-1)
        lp = [logits[len(p) - 1 + j, t] for j, t in enumerate(cont)]
        s = float(torch.stack(lp).sum())
        scores.append(s / len(cont) if cfg.reduction == "mean" else s)
    return scores


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the lowest index (deterministic)."""
    best = 0
    for k in range(1, len(scores)):
        if scores[k] > scores[best]:
            best = k
    return best
