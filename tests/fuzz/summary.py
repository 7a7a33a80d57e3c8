"""Totals over every fuzz case of the run, printed at its end (``conftest.py``) and written to
``<pytest basetemp>/fuzz_summary.json``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from fuzz.runner import Outcome


@dataclass
class Summary:
    cases: int = 0
    exit_ok: int = 0
    one_line_errors: int = 0
    tracebacks: int = 0
    violations: int = 0
    records_in: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    error_examples: List[str] = field(default_factory=list)
    seconds: float = 0.0
    path: Optional[Path] = None

    def add(self, fmt: str, o: Outcome) -> None:
        self.cases += 1
        self.formats[fmt] += 1
        self.seconds += o.seconds
        if o.traceback is not None or any("traceback" in v for v in o.violations):
            self.tracebacks += 1
        if o.violations:
            self.violations += 1
        if o.code == 0 and o.stats is not None:
            self.exit_ok += 1
            self.records_in += o.stats["records_in"]
            self.written += o.stats["written"]
            self.skipped.update(o.stats["skipped"])
        elif o.code == 2 and o.error_line:
            self.one_line_errors += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(o.error_line[:200])

    def as_dict(self) -> Dict[str, Any]:
        return {"cases": self.cases, "formats": len(self.formats), "exit_0": self.exit_ok,
                "one_line_errors": self.one_line_errors, "tracebacks": self.tracebacks,
                "invariant_violations": self.violations, "records_in": self.records_in,
                "written": self.written, "skipped_total": sum(self.skipped.values()),
                "skipped": dict(sorted(self.skipped.items())),
                "convert_seconds": round(self.seconds, 2), "error_examples": self.error_examples}

    def lines(self) -> List[str]:
        d = self.as_dict()
        out = [f"fuzz: {d['cases']} cases over {d['formats']} formats: {d['exit_0']} converted "
               f"(exit 0), {d['one_line_errors']} one-line errors (exit 2), tracebacks = "
               f"{d['tracebacks']}, invariant violations = {d['invariant_violations']}",
               f"fuzz: records_in {d['records_in']} = written {d['written']} + skipped "
               f"{d['skipped_total']}; convert time {d['convert_seconds']} s",
               "fuzz: skipped by reason: " + (", ".join(f"{k}={v}" for k, v in d["skipped"].items())
                                              or "none")]
        if self.path is not None:
            out.append(f"fuzz: summary written to {self.path}")
        return out

    def write(self, path: Path) -> None:
        self.path = path
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")


SUMMARY = Summary()
