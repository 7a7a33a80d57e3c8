"""Answer post-processing (mmit.evaluation.postprocess): the official VQA normalisation rules
(GT-Vision-Lab/VQA vqaEval.py processPunctuation / processDigitArticle) and option-letter
extraction."""

import pytest

from mmit.evaluation.postprocess import (POSTPROCESS, extract_option_letter, get_postprocess,
                                         vqa_normalize, vqa_process_digit_article,
                                         vqa_process_punctuation)
from mmit.registry import UnknownNameError


@pytest.mark.parametrize("raw, expected", [
    # the normalisation steps listed on the VQA evaluation page, one at a time
    ("Yes", "yes"),                      # lower-case
    ("Yes.", "yes"),                     # period removed ...
    ("2.5", "2.5"),                      # ... unless it is a decimal point
    ("Two dogs.", "2 dogs"),             # number words to digits
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),                # only none/zero..ten are mapped
    ("the red ball", "red ball"),        # articles removed
    ("A man an apple", "man apple"),
    ("dont", "don't"),                   # contraction apostrophe restored
    ("isnt it", "isn't it"),
    ("man's hat", "man's hat"),          # apostrophes are not punctuation here
    ("3:30", "3:30"),                    # nor are colons
    ("black/white", "black white"),      # punctuation between words -> space
    ("hello,world", "hello world"),
    ("yes !", "yes"),                    # punctuation touching a space is deleted
    ("hello, world", "hello world"),
    ("1,000", "1000"),                   # digit,digit anywhere: all punctuation deleted
    ("1,000 red-ish", "1000 redish"),
    ("(red)", "red"),
    ("  fire hydrant\n", "fire hydrant"),  # newline / outer spaces
    ("Is it 3:30?", "is it 3:30"),
])
def test_vqa_normalize_official_rules(raw, expected):
    assert vqa_normalize(raw) == expected


def test_vqa_punctuation_condition_reads_the_original_text():
    # '-' never touches a space in "a-b, c" -> replaced by a space; ',' does -> deleted
    assert vqa_process_punctuation("a-b, c") == "a b c"
    # the check is made per mark against the original string
    assert vqa_process_punctuation("a-b -c") == "ab c"


def test_vqa_period_count_quirk_is_kept():
    # the official script passes re.UNICODE (32) as re.sub's count: at most 32 periods go
    assert vqa_process_punctuation("." * 33 + "a") == ".a"
    assert vqa_process_punctuation("." * 32 + "a") == "a"


def test_vqa_digit_article_does_not_touch_punctuation():
    assert vqa_process_digit_article("The Two  cats.") == "2 cats."


@pytest.mark.parametrize("text, letter", [
    ("b", "B"), ("(B)", "B"), ("B.", "B"), (" c ", "C"), ("[d]", "D"),
    ("(B) the cat", "B"), ("B) cat", "B"), ("B. cat", "B"), ("b: cat", "B"),
    ("The answer is (C).", "C"), ("Answer: D", "D"), ("I choose option C", "C"),
    ("The correct choice is B", "B"), ("answer: (b)", "B"),
    ("The answer is a dog", None),        # article after "answer is"
    ("A dog is playing", None),           # leading article, not an option letter
    ("I think it is blue", None),
    ("", None),
])
def test_extract_option_letter(text, letter):
    assert extract_option_letter(text) == letter


def test_registry_functions():
    assert set(POSTPROCESS.names()) >= {"none", "strip", "lower", "vqa", "first-line",
                                        "option-letter"}
    assert get_postprocess("none")("  X\n") == "  X\n"
    assert get_postprocess("strip")("  X\n") == "X"
    assert get_postprocess("lower")("  Yes\n") == "yes"
    assert get_postprocess("vqa")("Two.") == "2"
    assert get_postprocess("first-line")("\n  cat \nmore text") == "cat"
    assert get_postprocess("first-line")(" \n ") == ""
    assert get_postprocess("option-letter")("(b) a cat") == "B"
    # no letter: the stripped text is kept so the option text can still match
    assert get_postprocess("option-letter")(" a red cat ") == "a red cat"


def test_unknown_postprocess_names_close_matches():
    with pytest.raises(UnknownNameError, match="option-letter"):
        get_postprocess("option-leter")


def test_vqa_normalize_is_idempotent():
    # the runner may post-process with "vqa" and vqa-accuracy normalises again
    for raw in ["Two dogs.", "1,000 red-ish", "dont know", "the cat, a dog", "yes !", "x...y",
                "(red)", "A man's hat", "3:30?", "ten.", "Twas night", "none of the above"]:
        once = vqa_normalize(raw)
        assert vqa_normalize(once) == once
