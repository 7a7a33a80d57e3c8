"""Training: stages (what trains), optimizer and schedule, data stream, checkpoints, the accelerate loop."""
