"""The fuzz suite's closing summary: totals of every case run, printed after the test results
(whether or not ``-s`` is given) and written to ``<pytest basetemp>/fuzz_summary.json``."""

import pytest

from fuzz.summary import SUMMARY


@pytest.fixture(scope="session")
def fuzz_summary(tmp_path_factory):
    yield SUMMARY
    if SUMMARY.cases:
        SUMMARY.write(tmp_path_factory.getbasetemp() / "fuzz_summary.json")


def pytest_terminal_summary(terminalreporter):
    if SUMMARY.cases:
        terminalreporter.section("fuzz summary")
        for line in SUMMARY.lines():
            terminalreporter.write_line(line)
