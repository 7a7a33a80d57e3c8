"""Thin wrapper: ``python eval.py ...`` == ``mmit eval ...`` (the held-out evaluation command)."""
import sys

from mmit.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
