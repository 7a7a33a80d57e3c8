"""Zero-shot evaluation: eval tasks, scorers, metrics, answer post-processing and reports."""
