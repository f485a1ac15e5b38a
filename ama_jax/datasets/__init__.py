"""Dataset readers and local TFDS builders.

Importing a builder's module registers it with TFDS (`ama_jax.tfds_source`
imports `idx_images` and `local_images`); `image_files` needs no TFDS.
"""
