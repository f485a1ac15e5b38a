"""Experiment configs: loading and validation."""
