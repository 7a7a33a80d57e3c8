"""lmms-eval task functions for the local ``mmit_local_*`` tasks (tests/test_lmms_eval_adapter.py).

Each line of ``mmit_local.jsonl`` (in the working directory): ``id``, ``image`` (a PNG path
relative to the working directory), ``question``, ``answer``, ``options``."""

from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def doc_to_target(doc):
    return doc["answer"]


def doc_to_choice(doc):
    return list(doc["options"])


def exact_match(doc, results):
    """``mmit eval``'s exact-match: the stripped prediction equals the stripped answer."""
    return {"exact_match": float(results[0].strip() == doc["answer"].strip())}
