"""The image value ranges: [0, 1] at public boundaries, [-1, 1] in the model.

Images, albedo, canonical images and reconstructions are in [0, 1] wherever
a user or a file sees them, and in [-1, 1] inside the model, as in the
reference (README, Conventions). These two maps are the only place the
conversion is written; they work on tensors and arrays of any shape.
"""


def to_signed(x):
  """[0, 1] -> [-1, 1]."""
  return x * 2.0 - 1.0


def to_unit(x):
  """[-1, 1] -> [0, 1]."""
  return (x + 1.0) / 2.0
