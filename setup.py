"""Build hook: the shipped configs (``configs/``) go into the package as ``mmit/_configs``.

Everything else is in ``pyproject.toml``. A wheel (``pip install .``, ``pip wheel .``) then holds the
configs, and ``mmit train --config_path llava/tiny_demo`` finds them by name
(:mod:`mmit.config.shipped`); a source checkout or an editable install reads ``configs/`` directly.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: What is copied from configs/ (YAML run and eval configs, accelerate/DeepSpeed JSON).
CONFIG_PATTERNS = ("*.yaml", "*.yml", "*.json")


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``configs/**`` to ``<build>/mmit/_configs/**``."""

    def run(self):
        super().run()
        src = ROOT / "configs"
        if not src.is_dir():  # building from an sdist made without configs/
            return
        dst = Path(self.build_lib) / "mmit" / "_configs"
        for pattern in CONFIG_PATTERNS:
            for f in sorted(src.rglob(pattern)):
                target = dst / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)


setup(cmdclass={"build_py": BuildPyWithConfigs})
