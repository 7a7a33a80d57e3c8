"""Caption tokenisation for BLEU / CIDEr, as the COCO caption evaluation does it.

pycocoevalcap (the COCO caption evaluation code, Chen et al., arXiv 1504.00325) tokenises every
caption with ``PTBTokenizer``: it runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines
-lowerCase`` in a ``java`` subprocess and then drops the punctuation tokens in
``PUNCTUATIONS``. Java is not always installed, so :func:`tokenize_captions` has two back-ends:

* ``"ptb"``: pycocoevalcap's own ``PTBTokenizer`` (needs ``java`` on ``PATH``): the reference.
* ``"python"``: a pure-Python equivalent: NLTK's ``TreebankWordTokenizer`` (a port of the same Penn
  Treebank conventions: split punctuation and clitics such as ``n't`` / ``'s``, quotes to
  ````` / ``''``), with brackets renamed as CoreNLP names them (``-lrb-``, ...: lower-cased by
  ``-lowerCase``, so they survive pycocoevalcap's punctuation filter exactly as with Java), a
  period before a space split off as CoreNLP does, lower-casing, then the same punctuation
  removal. On ordinary captions both give identical tokens (tested against Java when present);
  rare differences (abbreviations such as ``"Mr."`` mid-sentence, Unicode quotes) can move BLEU /
  CIDEr slightly.
* ``"auto"`` (default): ``ptb`` when ``java`` is found (falling back, with a warning, when the
  Java run fails, e.g. on a read-only pycocoevalcap install), else ``python``.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from typing import Dict, List

log = logging.getLogger(__name__)

#: Tokens pycocoevalcap's PTBTokenizer removes after tokenising (its ``PUNCTUATIONS``).
COCO_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                               "!", ",", ":", "-", "--", "...", ";"])
# CoreNLP names brackets -LRB- etc.; with -lowerCase they come out lower-cased, so pycocoevalcap's
# removal list (upper-case names) misses them and "-lrb-" stays a token. Reproduced here.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
# a period before a space ends a word ("dog. a cat"), unless the word is an initialism ("U.S.")
_INNER_PERIOD = re.compile(r"(?<=\w\w)\.(?=\s)")
# an opening single quote ("said 'hello'") is a quote token (`), not part of the word
_OPEN_QUOTE = re.compile(r"(^|(?<=[\s(\[{]))'(?=\w)")


def java_available() -> bool:
    """True when a ``java`` executable is on ``PATH`` (pycocoevalcap's PTBTokenizer needs it)."""
    return shutil.which("java") is not None


def python_ptb_tokenize(text: str) -> str:
    """Tokenise one caption like ``PTBTokenizer -lowerCase`` + pycocoevalcap's punctuation removal.

    Returns the space-joined tokens (lower-case), e.g. ``"A man's hat (red)."`` ->
    ``"a man 's hat -lrb- red -rrb-"`` (the bracket tokens survive, as with Java).
    """
    text = _INNER_PERIOD.sub(" .", text.replace("\n", " "))
    text = _OPEN_QUOTE.sub("` ", text)
    tokens = _treebank().tokenize(text)
    out = []
    for tok in tokens:
        tok = _BRACKETS.get(tok, tok).lower()
        if tok not in COCO_PUNCTUATIONS:
            out.append(tok)
    return " ".join(out)


@functools.lru_cache(maxsize=1)
def _treebank():
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def _ptb_tokenize(captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {k: [{"caption": c} for c in v] for k, v in captions.items()}
    return PTBTokenizer().tokenize(wrapped)


def tokenize_captions(captions: Dict[str, List[str]], backend: str = "auto") -> Dict[str, List[str]]:
    """Tokenise ``{key: [caption, ...]}`` into ``{key: [tokenised caption, ...]}`` (same order).

    Args:
        captions: any hashable keys (str recommended); each value a list of strings.
        backend: ``"auto"``, ``"ptb"`` (Java, pycocoevalcap) or ``"python"`` (see module docstring).

    Raises:
        ValueError: unknown ``backend``.
        RuntimeError: ``backend="ptb"`` without ``java`` on ``PATH``.
    """
    if backend not in ("auto", "ptb", "python"):
        raise ValueError(f"caption tokenizer must be 'auto', 'ptb' or 'python', got {backend!r}")
    if backend == "ptb" and not java_available():
        raise RuntimeError("tokenizer 'ptb' runs Stanford PTBTokenizer through pycocoevalcap and "
                           "needs `java` on PATH; install a JRE or use tokenizer='python'")
    if backend == "ptb" or (backend == "auto" and java_available()):
        keys = [k for k, v in captions.items() if v]
        try:
            out = _ptb_tokenize({k: captions[k] for k in keys})
        except (OSError, subprocess.SubprocessError) as e:
            # pycocoevalcap writes a temporary file next to its jar: fails on read-only installs
            if backend == "ptb":
                raise RuntimeError(f"pycocoevalcap PTBTokenizer failed: {e}") from e
            log.warning("PTBTokenizer (java) failed (%s); using the pure-Python equivalent", e)
        else:
            return {k: out.get(k, []) for k in captions}
    elif backend == "auto":
        log.info("java not found: tokenising captions with the pure-Python PTB equivalent")
    return {k: [python_ptb_tokenize(c) for c in v] for k, v in captions.items()}
