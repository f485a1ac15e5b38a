"""What a run shows and writes: console, progress, metrics, figures, results."""
