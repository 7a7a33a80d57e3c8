"""The two ways a model answers an eval prompt: ``generate`` (free text) and ``rank`` (vocabulary ranking).

**Model interface.** Both scorers work for every family that generates text: the family's
processor (:class:`~mmit.data.processor.Processor`) turns eval items into a typed prompt batch and
answer tokens, and the model answers through the inference contract of
:mod:`mmit.models.interface` (``prefill`` / ``extend`` / ``generate_tokens``), whatever its fusion
(splice, query prefix, cross-attention).

**rank** (InstructBLIP §2.5 "vocabulary ranking"; LAVIS ``Blip2VicunaInstruct.predict_class``): the
score of a candidate is the log-likelihood of its tokens after the prompt and media, summed
(``sum``, as LAVIS) or averaged per token (``mean``). Unlike LAVIS, which repeats the image and
prompt once per candidate, the prefix (media + prompt) runs ONCE per sample (``prefill``); all
candidates of all samples in the batch are then scored over the cached prefix in one ``extend``
call per chunk of ``max_rows`` rows; single-token candidates need no second pass at all. The winner
is the highest score; ties go to the lowest index.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from mmit.data.processor import cut_at_stop_strings
from mmit.evaluation.config import GenerateConfig, RankConfig
from mmit.evaluation.data import EvalItem
from mmit.models.interface import model_device


def prompt_batch(model, processor, items: Sequence[EvalItem]):
    """``(prompt items, left-padded Batch on the model's device)`` of eval ``items``."""
    prompts = [processor.prompt(it.turns, it.images, it.sample_id) for it in items]
    return prompts, processor.collate_prompts(prompts).to(model_device(model))


# -- generate ----------------------------------------------------------------------------------
@torch.no_grad()
def generate_batch(model, processor, items: Sequence[EvalItem], cfg: GenerateConfig) -> List[Tuple[str, List[int]]]:
    """Decode an answer for each item in one batched ``generate_tokens`` call (left padding, KV cache,
    greedy or beam search per ``cfg``). Returns ``(text, new ids up to and including the first
    stop token)`` per item; text is decoded without special tokens, stripped, and cut before the
    first of ``processor.stop_strings()`` (which are also passed to ``generate`` as transformers'
    ``stop_strings`` with the processor's tokenizer, so decoding ends there)."""
    _, batch = prompt_batch(model, processor, items)
    stops = processor.stop_token_ids()
    stop_strings = list(processor.stop_strings())
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "do_sample": False, "num_beams": cfg.num_beams,
              "eos_token_id": stops, "pad_token_id": processor.pad_id}
    if cfg.num_beams > 1:
        kwargs["length_penalty"] = cfg.length_penalty
    if stop_strings:
        kwargs.update(stop_strings=stop_strings, tokenizer=processor.tokenizer)
    out = model.generate_tokens(batch, **kwargs)
    results = []
    for row in out.tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        row = row if cut is None else row[:cut + 1]
        results.append((cut_at_stop_strings(processor.decode(row), stop_strings), row))
    return results


# -- rank --------------------------------------------------------------------------------------
def candidate_ids(processor, item: EvalItem, candidate: str, score_end_of_turn: bool, prompt=None) -> List[int]:
    """Token ids of ``candidate`` as the answer right after ``item``'s prompt (the processor's
    ``candidate_ids``: in context for a conversation template). ``prompt``: the processor's prompt
    item, when already built. Raises ``ValueError`` for a candidate without tokens."""
    return processor.candidate_ids(item.turns, candidate, score_end_of_turn, prompt, item.sample_id)


@torch.no_grad()
def rank_batch(model, processor, items: Sequence[EvalItem], cfg: RankConfig,
               memo: Optional[dict] = None) -> List[List[float]]:
    """Scores (log-likelihoods, natural log) of every candidate of every item, ``cfg.reduction``
    ``sum`` or ``mean`` over the candidate's tokens (module docstring). ``memo``: a dict reused
    across calls with the same processor that caches candidate tokenization per (prompt, candidate).
    """
    dev = model_device(model)
    prompts, batch = prompt_batch(model, processor, items)
    memo = {} if memo is None else memo

    def cont_ids(it, c, p):
        key = (tuple(p["input_ids"].tolist()), tuple((t.role, t.content) for t in it.turns), c, cfg.score_end_of_turn)
        if key not in memo:
            memo[key] = candidate_ids(processor, it, c, cfg.score_end_of_turn, p)
        return memo[key]

    conts = [[cont_ids(it, c, p) for c in it.candidates] for it, p in zip(items, prompts)]
    prefix = model.prefill(batch)
    first = prefix.logits.float().log_softmax(-1)  # [B,V]: the distribution of each answer's 1st token

    rows = [(i, c) for i, cs in enumerate(conts) for c in cs]
    L = max(len(c) for _, c in rows)
    R = len(rows)
    idx = torch.tensor([i for i, _ in rows], dtype=torch.long, device=dev)
    C = torch.full((R, L), processor.pad_id, dtype=torch.long, device=dev)
    cmask = torch.zeros((R, L), dtype=torch.long, device=dev)
    for r, (_, c) in enumerate(rows):
        C[r, :len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[r, :len(c)] = 1
    tok = torch.zeros((R, L), dtype=torch.float32, device=dev)
    tok[:, 0] = first[idx, C[:, 0]]
    if L > 1:
        step = max(1, int(cfg.max_rows))
        for a in range(0, R, step):
            b = min(R, a + step)
            logits = model.extend(prefix, idx[a:b], C[a:b, :L - 1], cmask[a:b, :L - 1],
                                  consume=(a == 0 and b == R)).float()  # [rows,L-1,V]
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
def rank_full_forward(model, processor, item: EvalItem, cfg: RankConfig) -> List[float]:
    """The reference ranking: one full forward pass (media + prompt + candidate, no cache) per
    candidate, as LAVIS does, through ``prefill(all_logits=True)``. Same scores as :func:`rank_batch`
    for decoder-only models; used by tests and ``bench/rank.py``."""
    prompt = processor.prompt(item.turns, item.images, item.sample_id)
    n = int(prompt["input_ids"].shape[0])
    scores = []
    for c in item.candidates:
        cont = candidate_ids(processor, item, c, cfg.score_end_of_turn, prompt)
        batch = processor.collate_prompts([processor.append(prompt, cont)]).to(model_device(model))
        logits = model.prefill(batch, all_logits=True).logits[0].float().log_softmax(-1)
        lp = [logits[n - 1 + j, t] for j, t in enumerate(cont)]
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
