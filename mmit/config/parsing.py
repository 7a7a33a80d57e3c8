"""Reading a config dataclass as data: draccus' parser fed a YAML file read with the safe loader
(:mod:`mmit.config.yamlio`) and ``--a.b=c`` overrides, and the unknown-key check with "did you mean"
(:mod:`mmit.config.suggest`). :mod:`mmit.config.schema` builds run configs on these."""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Sequence

import draccus


class _DataArgumentParser(draccus.argparsing.ArgumentParser):
    """draccus' parser with the file already read (as data, :func:`mmit.config.yamlio.read_yaml`) and
    command-line values read with the safe loader (:func:`~mmit.config.yamlio.parse_yaml_value`): no
    ``!include`` / ``include FILE`` values, no Python tags. ``cli_keys`` holds the dotted names the
    command line set, after parsing."""

    def __init__(self, config_class: type, file_args: Dict[str, Any]):
        super().__init__(config_class, exit_on_error=False)
        self._file_args = file_args
        self.cli_keys: List[str] = []

    def _postprocessing(self, parsed_args: argparse.Namespace) -> Any:  # overrides draccus' (reads no file)
        import copy

        import mergedeep
        from draccus.parsers import decoding

        from mmit.config.yamlio import parse_yaml_value

        values = dict(vars(parsed_args))
        if draccus.utils.CONFIG_ARG in values:
            raise ValueError(f"--{draccus.utils.CONFIG_ARG} among the overrides: give the config file once, "
                             "as the command's --config_path")
        flat = {k: parse_yaml_value(v, f"--{k}") if isinstance(v, str) else v for k, v in values.items()}
        self.cli_keys = sorted(flat)
        merged = mergedeep.merge(copy.deepcopy(self._file_args), draccus.utils.deflatten(flat, sep="."))
        return decoding.decode(self.config_class, merged)


def parse_dataclass(cls: type, config_path: Optional[str] = None, args: Sequence[str] = (), *,
                    allow_include: bool = True, what: str = "this config") -> Any:
    """Any draccus dataclass ``cls`` from a YAML file read as data (:func:`mmit.config.yamlio.read_yaml`)
    plus ``--a.b=c`` overrides (values read with the safe loader): the replacement for
    ``draccus.parse(cls, config_path=..., args=...)``, which reads files with PyYAML's FullLoader.

    Raises ``ValueError`` naming the file (bad keys or values, YAML errors, refused tags) and
    ``FileNotFoundError`` for a missing file."""
    from mmit.config.yamlio import read_yaml

    where = f"{config_path}: " if config_path else ""
    d: Any = {}
    if config_path is not None:
        d = read_yaml(config_path, allow_include=allow_include, what=what) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{where}expected a mapping at the top level, got {type(d).__name__}")
    try:
        return _DataArgumentParser(cls, d).parse_args(list(args))
    except (draccus.utils.DecodingError, draccus.utils.DraccusException, argparse.ArgumentError) as e:
        raise ValueError(f"{where}{e}") from None


def cli_keys_of(args: Sequence[str]) -> List[str]:
    """The dotted keys of ``--a.b=c`` / ``--a.b c`` overrides, in order."""
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def check_keys(cls: type, file_data: Dict[str, Any], args: Sequence[str], config_path: Optional[str]) -> None:
    """Unknown keys in the file's data or among the overrides -> ``ValueError`` with "did you mean"
    (:mod:`mmit.config.suggest`: mmit's own fields and the flag names of LLaVA and LLaMA-Factory)."""
    from mmit.config.fields import config_fields, section_names
    from mmit.config.suggest import flat_keys, unknown_key_message

    known = [f.name for f in config_fields(cls)] + section_names(cls)
    known_set = set(known)
    for origin, keys in ((config_path or "", flat_keys(file_data)), ("", cli_keys_of(args))):
        bad = [k for k in keys if k not in known_set and k != draccus.utils.CONFIG_ARG]
        bad = [k for k in bad if not any(k.startswith(b + ".") for b in bad)]  # an unknown section once
        if bad:
            raise ValueError(unknown_key_message(bad, known, origin))
