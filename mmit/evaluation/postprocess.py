"""Answer post-processing applied to generated text before a metric sees it.

:data:`POSTPROCESS` is a :class:`~mmit.registry.Registry` of plain functions ``fn(text: str) -> str``:

==================  ==========================================================================
``none``            the text unchanged
``strip``           leading / trailing whitespace removed
``lower``           stripped and lower-cased
``vqa``             the official VQA answer normalisation (:func:`vqa_normalize`)
``first-line``      the first non-blank line, stripped (models that keep talking after the answer)
``option-letter``   the option letter (``A``, ``B``, ...) a multiple-choice answer names
                    (:func:`extract_option_letter`)
==================  ==========================================================================

The VQA normalisation follows the official evaluation script of the VQA challenge
(GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, ``processPunctuation`` and
``processDigitArticle``; the same code ships in LAVIS as ``lavis/common/vqa_tools/vqa_eval.py`` and
scores InstructBLIP, arXiv 2305.06500). Its quirks are kept on purpose, because published numbers
include them:

* punctuation marks in :data:`VQA_PUNCT` are deleted when they touch a space (``"yes !"``) or when
  the answer contains a digit-comma-digit group anywhere (``"1,000"``), and replaced by a space
  otherwise (``"black/white"`` -> ``"black white"``); apostrophes and colons are kept;
* a period is deleted unless a digit follows it (``"2.5"`` stays, ``"yes."`` -> ``"yes"``); the
  script passes ``re.UNICODE`` (= 32) as the *count* argument of ``re.sub``, so at most 32 periods
  go, which :func:`vqa_process_punctuation` reproduces;
* :func:`vqa_process_digit_article` lower-cases, maps number words ``none``/``zero``..``ten`` to
  digits, drops the articles ``a an the`` and restores apostrophes of common contractions
  (``dont`` -> ``don't``).
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from mmit.registry import Registry

#: Name -> ``fn(text) -> text``.
POSTPROCESS: Registry[Callable[[str], str]] = Registry("answer post-processing")

# --- official VQA normalisation tables (data of vqaEval.py, GT-Vision-Lab/VQA) -------------------

#: Punctuation handled by ``processPunctuation`` (no apostrophe, no colon, no period: see above).
VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
             "`", ",", "?", "!")
#: Number words -> digits (``processDigitArticle``).
VQA_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
#: Articles removed by ``processDigitArticle``.
VQA_ARTICLES = frozenset(("a", "an", "the"))
#: Contractions written without apostrophe -> with (``processDigitArticle``). Keys are matched
#: after lower-casing, so the script's capitalised keys (``Im``, ``Ive``, ``Id've``) never fire;
#: they are kept for fidelity.
VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# The script's pattern "(?!<=\d)(\.)(?!\d)" opens with a negative *lookahead* for the literal
# "<=" + digit (a typo for a lookbehind); kept as is.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_MAX_PERIODS = re.UNICODE  # the script's accidental re.sub count (32)


def vqa_process_punctuation(text: str) -> str:
    """``processPunctuation`` of the official VQA script (see module docstring).

    Args:
        text: an answer string.

    Returns:
        The answer with punctuation deleted or replaced by spaces; case and spacing otherwise kept.
    """
    out = text
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in VQA_PUNCT:
        if drop_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=int(_MAX_PERIODS))


def vqa_process_digit_article(text: str) -> str:
    """``processDigitArticle`` of the official VQA script: lower-case, split on whitespace, number
    words to digits, drop ``a an the``, restore contraction apostrophes, join with single spaces."""
    words = []
    for w in text.lower().split():
        w = VQA_NUMBER_WORDS.get(w, w)
        if w not in VQA_ARTICLES:
            words.append(VQA_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_normalize(text: str) -> str:
    """The normalisation the official VQA script applies to a *predicted* answer: newlines and tabs
    become spaces, the ends are stripped, then :func:`vqa_process_punctuation` and
    :func:`vqa_process_digit_article`.

    Examples (from the script's rules): ``"Two dogs."`` -> ``"2 dogs"``; ``"the cat"`` -> ``"cat"``;
    ``"dont know"`` -> ``"don't know"``; ``"1,000"`` -> ``"1000"``; ``"black/white"`` ->
    ``"black white"``; ``"2.5"`` -> ``"2.5"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(text))


# --- option letters -------------------------------------------------------------------------------

_LETTER_ONLY = re.compile(r"^[\s(\[{'\"*]*([A-Za-z])[\s)\]}'\".:,*]*$")
_LETTER_LEAD = re.compile(r"^[\s*]*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])[).:\]])(?:\s|$)")
# after "answer is" / "option" / "choice": a bracketed letter of either case, or a bare capital
# (a bare lower-case "a" there is the article: "the answer is a dog")
_LETTER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)\s*(?i:is|:|=)?\s*(?i:option\s+|choice\s+)?"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])(?=[\s.,;:!?)]|$))")


def extract_option_letter(text: str) -> Optional[str]:
    """The option letter a generated multiple-choice answer names, upper-cased, or None.

    Recognised, in this order: the whole answer is one letter, possibly wrapped (``"b"``,
    ``"(B)"``, ``"B."``); the answer starts with a labelled letter (``"(B) the cat"``,
    ``"B) cat"``, ``"B. cat"``, ``"B: cat"``); a phrase names it (``"The answer is (B)."``,
    ``"Answer: B"``, ``"option C"``, ``"answer: (b)"``; after such a phrase a bare letter must be a
capital). Articles are not letters: ``"A dog"``, ``"The answer is a dog"`` give None.
    """
    if not text:
        return None
    first = text.strip()
    for rx in (_LETTER_ONLY, _LETTER_LEAD):
        m = rx.match(first)
        if m:
            return next(g for g in m.groups() if g).upper()
    m = _LETTER_PHRASE.search(first)
    if m:
        return (m.group(1) or m.group(2)).upper()
    return None


def option_letter(text: str) -> str:
    """``option-letter`` post-processing: :func:`extract_option_letter`, or the stripped text when
    no letter is found (so a metric can still match an answer that names the option's text)."""
    letter = extract_option_letter(text)
    return letter if letter is not None else text.strip()


def first_line(text: str) -> str:
    """The first line that is not blank, stripped (``""`` for blank input)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


POSTPROCESS.register("none", lambda text: text)
POSTPROCESS.register("strip", lambda text: text.strip())
POSTPROCESS.register("lower", lambda text: text.strip().lower())
POSTPROCESS.register("vqa", vqa_normalize)
POSTPROCESS.register("first-line", first_line)
POSTPROCESS.register("option-letter", option_letter)


def get_postprocess(name: str) -> Callable[[str], str]:
    """The function registered as ``name``; raises :class:`~mmit.registry.UnknownNameError` with
    close matches."""
    return POSTPROCESS.get(name)
