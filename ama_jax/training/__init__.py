"""The training step, its state, losses, draws, schedules and loop."""
