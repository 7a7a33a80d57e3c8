"""Thin wrapper: ``python train.py --config_path configs/llava/tiny_demo.yaml`` == ``mmit train ...``."""
import sys

from mmit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
