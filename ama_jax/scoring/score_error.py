"""The score command's user error: `ScoreError`."""
from ama_jax import errors


class ScoreError(errors.UserError):
  """Bad inputs of the score command; the message says what to fix."""
