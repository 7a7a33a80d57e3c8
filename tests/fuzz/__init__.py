"""Seeded fuzzing of every source reader through ``mmit convert`` (issue 16).

* :mod:`fuzz.cases`: the case generator. One valid small dataset per registered format, in that
  format's own layout, then 1-3 seeded mutations (record fields dropped / retyped / nested,
  bad bytes, media paths leading out of the media root, symlinks, zero-byte / truncated /
  mislabelled / huge media, malformed JSON / JSONL / CSV / parquet, convert flags).
* :mod:`fuzz.runner`: runs one case with ``mmit.data.convert.main`` in-process and checks the
  invariants (no traceback, exit 0 or a one-line error naming a file, ``records_in == written +
  sum(skipped)``, kebab-case reasons with examples, nothing from outside the media root in a
  shard, the lock released).
* :mod:`fuzz.summary`: the totals over all cases, printed at the end of the run.
"""
