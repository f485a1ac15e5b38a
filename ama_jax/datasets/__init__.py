"""Local TFDS builders; importing this package registers them with TFDS."""
from ama_jax.datasets import idx_images  # Registers `idx_images`.
