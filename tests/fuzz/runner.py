"""Run one fuzz case through ``mmit convert`` (in-process) and check the invariants.

Invariants (issue 16):

* no traceback: nothing escapes :func:`mmit.data.convert.main`, and stderr holds no ``Traceback``;
* exit status 0, or 2 with ONE line ``mmit convert: error: ...`` that names a file of the case;
* exit 0: ``_stats.json`` with ``records_in == written + sum(skipped.values())``, every reason a
  non-empty kebab-case string with a positive count and an example message (``not-sampled`` has
  none), as many ``<key>.json`` members in the shards as ``written``, one summary line on stdout;
* no member of any shard (complete or not) equals the bytes of a file outside the media root
  (the planted secrets, folders moved out, annotation files) or contains :data:`SECRET_MARK`;
* the output lock is released.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from fuzz.cases import SECRET_MARK, Case, write_case

KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
#: Files shorter than this are not compared with shard members (an empty or tiny file could match
#: by accident; the planted secrets are all longer).
MIN_FORBIDDEN = 16


@dataclass
class Outcome:
    case: str
    description: str
    code: Optional[int]
    stats: Optional[Dict[str, Any]]
    error_line: Optional[str]
    traceback: Optional[str]
    violations: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"{self.description}: exit {self.code}"]
        if self.error_line:
            lines.append(f"  {self.error_line}")
        lines += [f"  - {v}" for v in self.violations]
        if self.traceback:
            lines.append(self.traceback)
        return "\n".join(lines)


def forbidden_contents(case_dir: Path, media_root: Path) -> Dict[bytes, str]:
    """content -> path of every regular file of the case outside the (real) media root."""
    root = os.path.realpath(media_root)
    out: Dict[bytes, str] = {}
    for dirpath, dirnames, filenames in os.walk(case_dir):
        if Path(dirpath) == case_dir and "out" in dirnames:
            dirnames.remove("out")
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            real = os.path.realpath(p)
            if real == root or real.startswith(root + os.sep):
                continue
            if os.path.getsize(p) > 8 << 20:  # sparse giants: never read
                continue
            data = Path(p).read_bytes()
            if len(data) >= MIN_FORBIDDEN:
                out.setdefault(data, os.path.relpath(p, case_dir))
    return out


def shard_members(out: Path) -> List[tuple]:
    """``(tar file, member name, bytes)`` of every member of every (complete or partial) tar."""
    found = []
    if not out.is_dir():
        return found
    for p in sorted(out.iterdir()):
        if not (p.name.endswith(".tar") or p.name.endswith(".tar.tmp")):
            continue
        try:
            with tarfile.open(p) as tf:
                for m in tf.getmembers():
                    if m.isfile():
                        found.append((p.name, m.name, tf.extractfile(m).read()))
        except (tarfile.TarError, OSError) as e:
            if p.name.endswith(".tar"):
                found.append((p.name, "<unreadable>", repr(e).encode()))
    return found


def run_case(case: Case, case_dir: Path) -> Outcome:
    from mmit.data.convert import main as convert_main

    write_case(case, case_dir)
    L = case.layout
    out = case_dir / "out"
    argv = ["--format", case.fmt, "--input", str(case_dir / L.input), "--output", str(out),
            "--media-root", str(case_dir / L.media_root), "--no-progress"]
    for k, v in L.options.items():
        argv += ["--reader-option", f"{k}={json.dumps(v)}"]
    argv += case.flags
    err, std = io.StringIO(), io.StringIO()
    code: Optional[int] = None
    tb: Optional[str] = None
    t0 = time.perf_counter()
    with redirect_stderr(err), redirect_stdout(std):
        try:
            code = convert_main(argv)
        except KeyboardInterrupt:
            raise
        except BaseException:
            tb = traceback.format_exc()
    seconds = time.perf_counter() - t0
    o = Outcome(case.name, case.describe(), code, None, None, tb, seconds=seconds)
    v = o.violations
    stderr, stdout = err.getvalue(), std.getvalue()
    if tb is not None:
        v.append("an exception escaped mmit.data.convert.main")
    if "Traceback" in stderr:
        v.append(f"traceback on stderr: {stderr[-2000:]}")
    if code == 0:
        check_success(out, stdout, o)
    elif code == 2:
        lines = [l for l in stderr.splitlines() if l.startswith("mmit convert: error:")]
        if len(lines) != 1 or stderr.count("mmit convert: error:") != 1:
            v.append(f"exit 2 without exactly one error line: {stderr!r}")
        else:
            o.error_line = lines[0]
            names = {str(case_dir), str(case_dir.resolve())}
            if not any(n in lines[0] for n in names):
                v.append(f"the error line names no file of the case: {lines[0]!r}")
            if "\n" in lines[0]:
                v.append("multi-line error")
    elif tb is None:
        v.append(f"exit status {code!r} (expected 0 or 2); stderr: {stderr[-500:]!r}")
    # whatever happened: nothing from outside the media root in any shard, the lock released
    forbidden = forbidden_contents(case_dir, case_dir / L.media_root)
    for tar, name, data in shard_members(out):
        if name == "<unreadable>":
            v.append(f"{tar} is not a readable tar: {data.decode()}")
        elif data in forbidden:
            v.append(f"{tar}:{name} holds the bytes of {forbidden[data]}, outside the media root")
        elif SECRET_MARK in data:
            v.append(f"{tar}:{name} holds the planted secret text")
    if (out / "_convert.lock").exists():
        v.append("_convert.lock left behind")
    return o


def check_success(out: Path, stdout: str, o: Outcome) -> None:
    v = o.violations
    try:
        stats = json.loads((out / "_stats.json").read_text())
    except (OSError, ValueError) as e:
        v.append(f"exit 0 but no readable _stats.json: {e}")
        return
    o.stats = stats
    skipped = stats.get("skipped", {})
    if stats["records_in"] != stats["written"] + sum(skipped.values()):
        v.append(f"records_in {stats['records_in']} != written {stats['written']} + skipped "
                 f"{skipped}")
    examples = stats.get("skip_examples", {})
    for reason, n in skipped.items():
        if not isinstance(reason, str) or not KEBAB.match(reason):
            v.append(f"skip reason {reason!r} is not kebab-case")
        if not isinstance(n, int) or n < 1:
            v.append(f"skip count {reason}={n!r}")
        if reason != "not-sampled" and not examples.get(reason):
            v.append(f"skip reason {reason!r} has no example message")
    jsons = [name for _, name, _ in shard_members(out) if name.endswith(".json")]
    if len(jsons) != stats["written"]:
        v.append(f"{len(jsons)} .json members in the shards, written = {stats['written']}")
    lines = stdout.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("converted "):
        v.append(f"stdout is not one summary line: {stdout!r}")
