"""Data: the normalised :class:`~mmit.data.sample.Sample`, source readers, shards, collation."""
