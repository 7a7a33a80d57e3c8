"""The processor contract: one stateless object per family turns samples and prompts into a typed batch.

A family's :meth:`~mmit.families.base.ModelFamily.processor` builds one from the run config, the model
and the tokenizer. It carries nothing between calls except its construction arguments, so it pickles
into DataLoader workers and two calls on the same input give the same output.

Training: ``processor(sample) -> item`` (raises :class:`~mmit.data.sample.SampleError`),
:meth:`Processor.try_call` (a counted skip instead), ``collate(items) -> Batch`` (right-padded).

Inference (``mmit generate``, :mod:`mmit.evaluation.scorers`): ``prompt(turns, images) -> item``,
``collate_prompts(items) -> Batch`` (left-padded), ``candidate_ids`` (an answer's tokens after a
prompt, for vocabulary ranking), ``append`` (a prompt item with continuation tokens, for the
full-forward reference), ``stop_token_ids`` and ``decode``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from mmit.data.batch import Batch
from mmit.data.sample import Sample, SampleError, Turn

Item = Dict[str, Any]


class Processor:
    """Base class (module docstring). Subclasses set ``tokenizer`` and ``overflow`` (``skip`` or
    ``error``) and implement the methods below."""

    tokenizer: Any = None
    overflow: str = "skip"

    # -- training ----------------------------------------------------------------------------------
    def __call__(self, sample: Sample) -> Item:
        raise NotImplementedError

    def try_call(self, sample: Sample, stats) -> Optional[Item]:
        """``self(sample)``; under ``overflow='skip'`` a SampleError is counted in ``stats`` (by its
        reason) and None returned, under ``'error'`` it propagates."""
        if self.overflow not in ("skip", "error"):
            raise ValueError(f"data.overflow must be skip or error, not {self.overflow!r}")
        try:
            return self(sample)
        except SampleError as e:
            if self.overflow == "error":
                raise
            stats.add(e.reason, sample.id, str(e))
            return None

    def collate(self, items: Sequence[Item]) -> Batch:
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------------------
    def prompt(self, turns: Sequence[Turn], images: Sequence[Any] = (), sample_id: str = "prompt") -> Item:
        """A prompt item: ``turns`` end with the user turn; ``images`` are PIL images in placeholder order."""
        raise NotImplementedError

    def collate_prompts(self, items: Sequence[Item]) -> Batch:
        raise NotImplementedError

    def candidate_ids(self, turns: Sequence[Turn], candidate: str, score_end_of_turn: bool,
                      item: Optional[Item] = None, sample_id: str = "prompt") -> List[int]:
        """Token ids of ``candidate`` as the answer right after the prompt ``turns``."""
        raise NotImplementedError

    def append(self, item: Item, ids: Sequence[int]) -> Item:
        """A copy of prompt ``item`` with ``ids`` appended to its text."""
        import torch

        out = dict(item)
        out["input_ids"] = torch.cat([item["input_ids"], torch.tensor(list(ids), dtype=torch.long)])
        return out

    def stop_token_ids(self) -> List[int]:
        """Ids that end an answer (eos, and the template's end-of-turn token)."""
        return [self.tokenizer.eos_token_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text: special tokens removed, stripped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id
