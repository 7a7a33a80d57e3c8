"""The nine procedural instruction tasks, their five instruction templates each, and the split.

Held-in tasks (trained on) each exercise ONE skill: naming a colour, a shape, a position, counting
objects, or checking whether a colour is present. Held-out tasks (never trained on) RECOMBINE
those skills: counting only the objects of one colour, naming the colour at a position, the shape
of the object of a given colour, the position of the object of a given colour. Every task is
multiple choice with a fixed candidate list, so the chance level is known (1 / #candidates).

Labels are balanced: :func:`balanced_answers` deals each task's options out evenly (counts differ
by at most one), and :meth:`ProceduralTask.make_with_answer` draws a scene with a given answer by
rejection from the task's own generator, so a constant answer scores the chance level (up to one
sample) instead of the majority class of a skewed generator (``color-count`` alone answers "1"
about 70% of the time).

========================  ========  ============================================  =========
task                      split     skills                                         chance
========================  ========  ============================================  =========
``color``                 held-in   colour                                         1/4
``shape``                 held-in   shape                                          1/3
``position``              held-in   position                                       1/4
``count``                 held-in   counting                                       1/4
``color-exists``          held-in   colour (presence)                              1/2
``color-count``           held-out  colour + counting                              1/4
``color-at-position``     held-out  position + colour                              1/4
``shape-of-color``        held-out  colour + shape                                 1/3
``position-of-color``     held-out  colour + position                              1/4
========================  ========  ============================================  =========
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from mmit.evaluation.procedural.scenes import COLORS, POSITIONS, SHAPES, Scene, random_scene

COUNTS = ("1", "2", "3", "4")
#: Draws :meth:`ProceduralTask.make_with_answer` tries before giving up.
MAX_TRIES = 20_000
YES_NO = ("yes", "no")


@dataclass(frozen=True)
class ProceduralTask:
    """name; split ``held-in``/``held-out``; skills; ``options`` (the candidates, fixed);
    ``templates`` (5 format strings over the fields ``make`` returns); ``make(rng) ->
    (scene, fields, answer)``."""

    name: str
    split: str
    skills: Tuple[str, ...]
    options: Tuple[str, ...]
    templates: Tuple[str, ...]
    make: Callable[[random.Random], Tuple[Scene, Dict[str, str], str]]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.options)

    def make_with_answer(self, rng: random.Random, answer: str,
                         max_tries: int = MAX_TRIES) -> Tuple[Scene, Dict[str, str], str]:
        """``make(rng)`` repeated until its answer is ``answer`` (rejection sampling: the scene
        follows the task's own distribution given that answer). Deterministic given ``rng``'s
        state. Raises ``ValueError`` for an answer not among ``options`` or not reached in
        ``max_tries`` draws (the rarest answer, ``color-count`` "4", needs ~256 on average)."""
        if answer not in self.options:
            raise ValueError(f"task {self.name!r}: answer {answer!r} is not one of {list(self.options)}")
        for _ in range(max_tries):
            scene, fields, got = self.make(rng)
            if got == answer:
                return scene, fields, got
        raise ValueError(f"task {self.name!r}: no scene with answer {answer!r} in {max_tries} draws")


def balanced_answers(task: "ProceduralTask", n: int, rng: random.Random) -> List[str]:
    """``n`` answers for ``task``: consecutive blocks of ``len(options)`` answers, each block a
    ``rng`` permutation of the options, so every option occurs ``n // k`` or ``n // k + 1`` times
    (k options) and any prefix is as balanced as it can be."""
    out: List[str] = []
    while len(out) < n:
        block = list(task.options)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def _one(rng):
    return random_scene(rng, 1)


def _color(rng):
    s = _one(rng)
    return s, {}, s.objects[0].color


def _shape(rng):
    s = _one(rng)
    return s, {}, s.objects[0].shape


def _position(rng):
    s = _one(rng)
    return s, {}, s.objects[0].position


def _count(rng):
    s = random_scene(rng, rng.randint(1, 4))
    return s, {}, str(s.count())


def _color_exists(rng):
    want_yes = rng.random() < 0.5
    color = rng.choice(list(COLORS))
    others = [c for c in COLORS if c != color]
    n = rng.randint(1, 3)
    s = random_scene(rng, n, colors=others)
    if want_yes:  # recolour one object
        objs = list(s.objects)
        k = rng.randrange(n)
        objs[k] = type(objs[k])(objs[k].shape, color, objs[k].position)
        s = Scene(tuple(objs))
    return s, {"color": color}, "yes" if want_yes else "no"


def _color_count(rng):
    s = random_scene(rng, rng.randint(1, 4))
    color = rng.choice([o.color for o in s.objects])
    return s, {"color": color}, str(s.count(color))


def _color_at_position(rng):
    s = random_scene(rng, rng.randint(2, 4))
    o = rng.choice(s.objects)
    return s, {"position": o.position}, o.color


def _shape_of_color(rng):
    s = random_scene(rng, rng.randint(2, 3), distinct_colors=True)
    o = rng.choice(s.objects)
    return s, {"color": o.color}, o.shape


def _position_of_color(rng):
    s = random_scene(rng, rng.randint(2, 3), distinct_colors=True)
    o = rng.choice(s.objects)
    return s, {"color": o.color}, o.position


TASKS: Dict[str, ProceduralTask] = {t.name: t for t in [
    ProceduralTask("color", "held-in", ("colour",), tuple(COLORS), (
        "What colour is the shape?",
        "Name the colour of the object in the image.",
        "Which colour does the figure have?",
        "Tell me the colour of the shape you see.",
        "What is the colour of the object shown?"), _color),
    ProceduralTask("shape", "held-in", ("shape",), SHAPES, (
        "What shape is shown?",
        "Name the shape in the image.",
        "Which kind of shape is this?",
        "Is the object a circle, a square or a triangle?",
        "What is the geometric shape in the picture?"), _shape),
    ProceduralTask("position", "held-in", ("position",), POSITIONS, (
        "Where is the shape?",
        "In which corner of the image is the object?",
        "Where in the picture is the figure placed?",
        "Tell me the position of the shape.",
        "Which part of the image holds the object?"), _position),
    ProceduralTask("count", "held-in", ("counting",), COUNTS, (
        "How many shapes are there?",
        "Count the objects in the image.",
        "What is the number of figures shown?",
        "How many objects can you see?",
        "Tell me how many shapes the picture contains."), _count),
    ProceduralTask("color-exists", "held-in", ("colour",), YES_NO, (
        "Is there a {color} shape?",
        "Does the image contain a {color} object?",
        "Can you see anything {color} in the picture?",
        "Is any of the figures {color}?",
        "Answer yes or no: is there a {color} shape?"), _color_exists),
    ProceduralTask("color-count", "held-out", ("colour", "counting"), COUNTS, (
        "How many {color} shapes are there?",
        "Count the {color} objects in the image.",
        "What is the number of {color} figures shown?",
        "How many {color} objects can you see?",
        "Tell me how many {color} shapes the picture contains."), _color_count),
    ProceduralTask("color-at-position", "held-out", ("position", "colour"), tuple(COLORS), (
        "What colour is the shape in the {position}?",
        "Name the colour of the object in the {position} of the image.",
        "Which colour does the figure in the {position} have?",
        "Tell me the colour of the shape in the {position}.",
        "What is the colour of the object shown in the {position}?"), _color_at_position),
    ProceduralTask("shape-of-color", "held-out", ("colour", "shape"), SHAPES, (
        "What shape is the {color} object?",
        "Name the shape of the {color} figure.",
        "Which kind of shape is {color}?",
        "Is the {color} object a circle, a square or a triangle?",
        "What is the geometric shape of the {color} thing in the picture?"), _shape_of_color),
    ProceduralTask("position-of-color", "held-out", ("colour", "position"), POSITIONS, (
        "Where is the {color} shape?",
        "In which corner of the image is the {color} object?",
        "Where in the picture is the {color} figure placed?",
        "Tell me the position of the {color} shape.",
        "Which part of the image holds the {color} object?"), _position_of_color),
]}


def tasks_of_split(split: str) -> List[ProceduralTask]:
    """Tasks of ``held-in``, ``held-out`` or ``all``; raises ``ValueError`` otherwise."""
    if split == "all":
        return list(TASKS.values())
    if split not in ("held-in", "held-out"):
        raise ValueError(f"split must be held-in, held-out or all, not {split!r}")
    return [t for t in TASKS.values() if t.split == split]
