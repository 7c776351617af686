"""Static shape checks at public boundaries, with one message format.

A mis-shaped tensor fails far from its cause (a broadcast that silently
succeeds, an einsum or a convolution that reports its own operands), so
public functions check their arguments' shapes first and name the argument,
the expected shape and the shape they got:

    depth must be [B, 64, 64], got shape (1, 32, 32).

Only static shapes are read (no TensorFlow import, no graph ops): the same
check serves tf.Tensor, KerasTensor and NumPy arguments, and costs nothing
when a tf.function runs.
"""


def _static_shape(value):
  """`value`'s static shape as a tuple (None for unknown sizes), or None
  when even its rank is unknown."""
  shape = value.shape
  if getattr(shape, "rank", 0) is None:  # tf.TensorShape(None)
    return None
  return tuple(None if size is None else int(size) for size in shape)


def _format_shape(expected):
  """`("B", 64, 64, 3)` -> `"[B, 64, 64, 3]"`, the form docstrings use."""
  return "[" + ", ".join(str(axis) for axis in expected) + "]"


def check_shape(value, name, expected, note=None, unknown_ok=False):
  """Raises ValueError unless `value`'s static shape matches `expected`.

  Args:
    value: a tf.Tensor, KerasTensor, np.ndarray or anything with a `.shape`.
    name: what `value` is, for the message: the argument's name ("depth")
      or a phrase ("Encoder input").
    expected: one entry per axis. An int is the size the axis must have; a
      str names an axis of any size ("B", "H"), which is only a rank check
      for that axis.
    note: optional words printed after the shape: what the entries are or
      why the sizes are fixed ("RGB", "(rx, ry, rz, tx, ty, tz)").
    unknown_ok: also accept an axis whose static size is unknown (None)
      where `expected` has an int, e.g. while Keras traces with undetermined
      spatial sizes. By default an unknown size fails: the caller needs it
      at trace time. An unknown rank always fails.

  Raises:
    ValueError: "{name} must be {expected} {note}, got shape {shape}."
  """
  shape = _static_shape(value)
  matches = shape is not None and len(shape) == len(expected) and all(
      isinstance(want, str) or got == want or (got is None and unknown_ok)
      for got, want in zip(shape, expected))
  if not matches:
    described = _format_shape(expected) + (f" {note}" if note else "")
    raise ValueError(f"{name} must be {described}, got shape {value.shape}.")
