"""Data: sources, TFDS builders, the paper's splits as arrays."""
