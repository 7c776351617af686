"""The depth PNG convention (DESIGN section 6): grey level g, near = bright.

A depth d in scene units is stored as g = 1 - (d - min_depth) /
(max_depth - min_depth) in [0, 1]: min_depth is white, max_depth (the
background) black. A 16-bit PNG holds round(g * 65535). Reading back is the
inverse, g' = (1 - g) * 2 - 1 in [-1, 1] then the model's linear [-1, 1] ->
[min_depth, max_depth] rescale, i.e. d = min_depth + (1 - g) * (max_depth -
min_depth).

NumPy only (no TensorFlow), so the synthetic-data workers can encode with it;
`gray_to_depth` is plain arithmetic and works on tensors too
(`datasets.decode_depth` decodes PNG bytes with it).
"""

import numpy as np

MAX_VALUE = 65535  # g = 1 in a 16-bit PNG


def gray_to_depth(gray, min_depth, max_depth):
  """Grey level g in [0, 1] (array or tensor, any shape) -> depth, same shape.

  The result is in [min_depth, max_depth] scene units, of gray's dtype.
  """
  return min_depth + (1.0 - gray) * (max_depth - min_depth)


def encode(depth, min_depth, max_depth):
  """Depth `[H, W]` in scene units -> uint16 `[H, W]` 16-bit PNG values.

  Depths outside [min_depth, max_depth] are clipped to it (g in [0, 1]).
  """
  depth = np.asarray(depth, np.float64)
  gray = 1.0 - (depth - min_depth) / (max_depth - min_depth)
  return np.round(np.clip(gray, 0.0, 1.0) * MAX_VALUE).astype(np.uint16)


def decode(values, min_depth, max_depth):
  """uint16 16-bit PNG values (any shape) -> float64 depth in scene units."""
  return gray_to_depth(np.asarray(values, np.float64) / MAX_VALUE, min_depth,
                       max_depth)
