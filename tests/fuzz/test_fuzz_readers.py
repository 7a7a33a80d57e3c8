"""Seeded fuzzing of every registered reader through ``mmit convert`` (issue 16).

Each case (``<format>-<seed>``, see :mod:`fuzz.cases`) is a small valid dataset in the format's own
layout with 1-3 mutations, converted in-process into its own folder; :mod:`fuzz.runner` lists the
invariants. Seed 0 of every format is the unmutated dataset, which must convert with every record
written. Re-run one case with ``pytest tests/fuzz -k "llava-7"``; its description (the mutations
applied) is in the failure message. The totals are printed at the end of the run.
"""

import os

import pytest

from fuzz.cases import BUILDERS, make_case
from fuzz.runner import run_case
from mmit.data.sources import available_formats

#: Cases per format (seed 0 unmutated): 24 formats x 48 cases, about 30 s on 2 cores (the whole
#: tests/fuzz folder 35 s). MMIT_FUZZ_CASES=N changes it for a longer local run.
N_CASES = int(os.environ.get("MMIT_FUZZ_CASES", "48"))
FORMATS = sorted(BUILDERS)


def test_every_registered_format_is_fuzzed():
    assert set(available_formats()) == set(BUILDERS)


@pytest.mark.parametrize("fmt,seed", [(f, s) for f in FORMATS for s in range(N_CASES)],
                         ids=[f"{f}-{s}" for f in FORMATS for s in range(N_CASES)])
def test_fuzz_case(fmt, seed, tmp_path, fuzz_summary):
    case = make_case(fmt, seed)
    outcome = run_case(case, tmp_path / "case")
    fuzz_summary.add(fmt, outcome)
    assert not outcome.violations, outcome.report()
    if seed == 0:  # the unmutated dataset: every record converts
        st = outcome.stats or {}
        assert outcome.code == 0 and not st.get("skipped") and st.get("written") == \
            st.get("records_in") > 0, outcome.report() + f"\n{st.get('skip_examples')}"
