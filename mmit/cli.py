"""The ``mmit`` command: ``train``, ``convert``, ``inspect``, ``generate``, ``eval``, ``edit``, ``export``,
``import``.

Errors the user can fix (bad config keys, unknown registry names, missing files, bad records) are
printed as one line on stderr with exit code 2; anything else is a bug and shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

USAGE = """usage: mmit <command> [options]     (mmit --version: the installed version)

commands:
  train     train from a config:   mmit train --config_path llava/tiny_demo [--train.max_steps=4 ...] [--resume]  (a YAML file or a shipped config's name)
  convert   source files -> webdataset shards:   mmit convert --format llava --input FILE --media-root DIR --output DIR
  inspect   look at converted shards:   mmit inspect OUT_DIR
  generate  answer a prompt:       mmit generate --checkpoint DIR [--image PATH ...] [--video PATH ...] [--audio PATH ...] --prompt TEXT [--temperature T ...] [--json] [--trust-remote-code]
  chat      talk to a checkpoint:  mmit chat --checkpoint DIR [--image PATH] [--temperature T --top-p P --num-beams N --max-new-tokens N]
  serve     web demo + OpenAI API: mmit serve --checkpoint DIR [--host 127.0.0.1 --port 8000]   (pip install 'mmit[serve]')
  eval      zero-shot evaluation:  mmit eval --config_path configs/eval/SUITE.yaml --checkpoint DIR --output DIR [--trust-remote-code]
  edit      edit an image (instructpix2pix family):  mmit edit --checkpoint DIR --image PATH --prompt TEXT --output PNG
  export    to another toolkit's folder:   mmit export --checkpoint DIR --format FORMAT --output DIR
  import    from another toolkit's folder: mmit import --format FORMAT --input DIR --output DIR

`mmit <command> --help` for a command's options."""


#: Commands that never load a model: they start without importing torch or transformers.
DATA_COMMANDS = ("convert", "inspect")


def _quiet_libraries(load_transformers: bool = True) -> None:
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Libraries that log through the root logger's module functions (open_clip's logging.info) would
    # otherwise install a root stderr handler (logging.basicConfig) and print every mmit line twice.
    if not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())
    if not load_transformers and "transformers" not in sys.modules:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_train(argv: List[str]) -> int:
    """``mmit train``: read and check the config (keys, values, paths, data) before anything is built."""
    from mmit.config.schema import load_config

    resume = "--resume" in argv
    argv = [a for a in argv if a != "--resume"]
    config_path = None
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config_path="):
            config_path = a.split("=", 1)[1]
        elif a == "--config_path" and i + 1 < len(argv):
            config_path = argv[i + 1]
            i += 1
        else:
            rest.append(a)
        i += 1
    if any(a in ("-h", "--help") for a in rest):
        from mmit.config.help import train_help

        print(train_help(config_path, [a for a in rest if a not in ("-h", "--help")]))
        return 0
    from mmit.config.validate import check_data, check_values
    from mmit.families import get_family_class

    if config_path is None:  # what the user typed is checked first, then the missing config is the error
        from mmit.config.shipped import missing_config_message

        cfg = load_config(None, rest)
        if any(a.startswith("--data.") for a in rest):
            check_values(cfg, paths=True)
            check_data(cfg)
        raise ValueError(missing_config_message())
    cfg = load_config(config_path, rest)
    check_values(cfg, get_family_class(cfg.family).stages, paths=True)
    for note in check_data(cfg):  # data.format inferred from data.path; before any model is built
        print(f"mmit train: {note}", file=sys.stderr)
    if resume:
        cfg.train.resume = True
    from mmit.training.trainer import train

    run_dir = train(cfg)
    if os.environ.get("RANK", "0") != "0":  # several processes (torchrun / accelerate launch): one prints
        return 0
    print(f"run folder: {run_dir}  (final weights: {run_dir / 'final'}, metrics: {run_dir / 'metrics.jsonl'}, "
          f"plot: {run_dir / 'loss.png'})")
    return 0


def cmd_generate(argv: List[str]) -> int:
    from mmit.inference import generate, load_for_inference
    from mmit.serve.sampling import add_sampling_args, sampling_from_args

    p = argparse.ArgumentParser(prog="mmit generate",
                                description="Answer a prompt about images, videos or audio with a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    p.add_argument("--image", action="append", default=[],
                   help="image file; repeat for several images, placed at the prompt's <image> markers in order "
                        "(without markers: one <image> per image in front of the prompt)")
    p.add_argument("--video", action="append", default=[],
                   help="video file (mp4, webm, gif, ...), decoded as the family reads video in training (e.g. "
                        "InstructBLIP: qformer.num_frames uniformly spaced frames); repeat for several, placed at "
                        "the prompt's <video> markers in order (without markers: one <video> per video in front, "
                        "after the images). A family that does not read video exits with an error")
    p.add_argument("--audio", action="append", default=[],
                   help="audio file (wav, flac, mp3, ...; or a video's audio track), for families that read audio; "
                        "repeat for several, placed at the prompt's <audio> markers (without markers: one <audio> "
                        "per file in front, after the videos). A family that does not read audio exits with an error")
    p.add_argument("--prompt", required=True)
    add_sampling_args(p)  # --temperature (0: greedy), --top-p, --num-beams, --max-new-tokens, --seed
    p.add_argument("--json", action="store_true", help='print {"text": ..., "token_ids": [...]} (new ids only)')
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model folders the checkpoint names run their own Python code (an auto_map in "
                        "their config.json). Off by default; a checkpoint's saved config can never turn it on")
    a = p.parse_args(argv)
    sampling = sampling_from_args(a)  # ValueError (exit 2) for a value out of range, before loading
    for kind, paths in (("image", a.image), ("video", a.video), ("audio", a.audio)):
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{kind} not found: {path}")
    from mmit.data.media import decode_image

    images = []  # decoded before the model loads: a bad image fails fast
    for path in a.image:
        with open(path, "rb") as f:
            images.append(decode_image(f.read(), path))
    # only pass the keyword when set, so a stand-in load_for_inference(ckpt) keeps working
    trust = {"trust_remote_code": True} if a.trust_remote_code else {}
    model, processor, _ = load_for_inference(a.checkpoint, **trust)
    # videos and audio are decoded by the family (processor.decode_media), as in training
    sampling.apply_seed()
    ans = generate(model, processor, a.prompt, images or None, sampling.max_new_tokens, video=a.video or None,
                   audio=a.audio or None, **sampling.generate_kwargs())
    print(json.dumps({"text": ans.text, "token_ids": ans.token_ids}) if a.json else ans.text)
    return 0


def cmd_convert(argv: List[str]) -> int:
    from mmit.data.convert import main as convert_main

    return convert_main(argv)


def cmd_export(argv: List[str]) -> int:
    from mmit.export.cli import export_main

    return export_main(argv)


def cmd_import(argv: List[str]) -> int:
    from mmit.export.cli import import_main

    return import_main(argv)


def _lazy(target: str):
    """A command implemented as ``module:function(argv) -> int``, imported only when it runs."""

    def run(argv: List[str]) -> int:
        import importlib

        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(argv)

    return run


COMMANDS = {"train": cmd_train, "convert": cmd_convert, "inspect": _lazy("mmit.data.inspect:main"),
            "generate": cmd_generate, "eval": _lazy("mmit.evaluation.cli:main"), "export": cmd_export,
            "import": cmd_import, "chat": _lazy("mmit.serve.chat:main"), "serve": _lazy("mmit.serve.app:main")}


def all_commands() -> dict:
    """The shared commands plus every family's own (``ModelFamily.commands``, e.g. ``edit``)."""
    from mmit.families import family_table

    out = dict(COMMANDS)
    out.update({k: _lazy(target) for k, (_, target) in family_table("commands").items()})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from mmit import __version__

        print(f"mmit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    # a shared command runs without importing every family (torch, transformers: seconds)
    commands = COMMANDS if name in COMMANDS else all_commands()
    if name not in commands:
        import difflib

        close = difflib.get_close_matches(name, commands, n=3)
        print(f"mmit: unknown command {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
              + f" (commands: {', '.join(commands)})", file=sys.stderr)
        return 2
    _quiet_libraries(load_transformers=name not in DATA_COMMANDS)
    from mmit.data.sample import SampleError
    from mmit.extras import MissingExtraError
    from mmit.registry import UnknownNameError

    try:
        return commands[name](rest)
    except (FileNotFoundError, UnknownNameError, SampleError, ValueError, OSError, MissingExtraError) as e:
        print(f"mmit {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
