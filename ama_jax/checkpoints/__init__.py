"""Orbax checkpoints of a run: writing, reading, damage checks."""
