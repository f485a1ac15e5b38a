"""Scores of images: features, calibration, kNN, metrics, export."""
