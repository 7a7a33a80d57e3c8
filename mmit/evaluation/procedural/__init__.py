"""A procedurally generated instruction suite that needs no download.

PIL-rendered scenes of coloured shapes (:mod:`.scenes`), nine multiple-choice instruction tasks
with five instruction templates each and a held-in / held-out split whose held-out tasks recombine
the skills of the held-in ones (:mod:`.tasks`), written as webdataset shards (:mod:`.build`,
``python -m mmit.evaluation.procedural``). ``make demo`` trains the tiny LLaVA on the held-in
tasks and evaluates both splits with ``configs/eval/procedural.yaml``.
"""

from mmit.evaluation.procedural.tasks import TASKS, ProceduralTask, tasks_of_split

__all__ = ["TASKS", "ProceduralTask", "tasks_of_split"]
