"""``mmit train --help``: the usage, the shipped configs, and every field of the run config with its type,
default (or the value in the config given) and comment (:mod:`mmit.config.fields`).

Printed as plain text, never through argparse's ``%`` formatting, so any character in a comment is safe.
"""

from __future__ import annotations

from typing import Optional, Sequence

from mmit.config.fields import config_fields, format_fields

USAGE = """usage: mmit train --config_path CONFIG [--resume] [--section.field=value ...]

CONFIG is a YAML file or the name of a shipped config (llava/tiny_demo). Every field below can be
overridden on the command line as --section.field=value (values are read as YAML: 4, true, [a, b]).
data.format is inferred from data.path when it is left at shards: a .json/.jsonl file is read by the
source reader its records fit (set --data.format=llava --data.media_root=DIR to choose), a folder of
.tar files is shards. Custom model code (an auto_map) runs only with --model.llm.trust_remote_code=true
on the command line; a config file cannot turn it on. `mmit train --family=NAME --help` lists another
family's fields."""


def train_help(config_path: Optional[str] = None, args: Sequence[str] = ()) -> str:
    """The help text of ``mmit train`` for the family of ``config_path`` / ``--family`` in ``args``
    (default ``llava``), showing the config's values when a config is given. Raises what
    :func:`~mmit.config.schema.load_config` raises for a config that does not load."""
    from mmit.config.schema import _family_of, load_config, run_config_class
    from mmit.config.shipped import shipped_configs

    family_args = [a for i, a in enumerate(args) if a.startswith("--family") or (i and args[i - 1] == "--family")]
    if config_path is not None:
        cfg = load_config(config_path, family_args, check=False)
        fields, label = config_fields(type(cfg), cfg), f"in {config_path}"
        family = cfg.family
    else:
        family = _family_of({}, family_args)
        fields, label = config_fields(run_config_class(family)), "default"
    fields = [f for f in fields if f.name != "family"]
    from mmit.families import FAMILIES

    head = [USAGE, "", f"shipped configs: {', '.join(shipped_configs('run'))}",
            f"families (--family): {', '.join(FAMILIES)}", "",
            f"fields of family {family!r} (name  type  ({label}: value)):"]
    return "\n".join(head) + "\n" + format_fields(fields, value_label=label)
