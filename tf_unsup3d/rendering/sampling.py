"""Differentiable bilinear sampling in pure TensorFlow (gather based)."""

import tensorflow as tf

from tf_unsup3d import shapes


def bilinear_sample(image, grid):
  """Samples `image` at `grid` with corners aligned and zero padding.

  Equivalent to PyTorch's `grid_sample(mode='bilinear', align_corners=True,
  padding_mode='zeros')`: grid value -1 is the centre of the first pixel, +1
  the centre of the last; taps that fall outside the image contribute zero.
  Differentiable with respect to both `image` and `grid`.

  Args:
    image: `[B, H, W, C]` float image.
    grid: `[B, Ho, Wo, 2]` sampling positions (x, y) in [-1, 1] (values
      outside fade to zero).

  Returns:
    `[B, Ho, Wo, C]` sampled image.
  """
  with tf.name_scope("bilinear_sample"):
    image = tf.convert_to_tensor(image)
    grid = tf.convert_to_tensor(grid, image.dtype)
    shapes.check_shape(image, "image", ("B", "H", "W", "C"))
    shapes.check_shape(grid, "grid", ("B", "Ho", "Wo", 2))
    shape = tf.shape(image)
    batch, height, width = shape[0], shape[1], shape[2]
    x = (grid[..., 0] + 1.0) * 0.5 * tf.cast(width - 1, image.dtype)
    y = (grid[..., 1] + 1.0) * 0.5 * tf.cast(height - 1, image.dtype)
    x0 = tf.floor(x)
    y0 = tf.floor(y)
    wx1, wy1 = x - x0, y - y0
    x0 = tf.cast(x0, tf.int32)
    y0 = tf.cast(y0, tf.int32)
    # Taps are rows of the flattened batch: a plain gather, whose gradient
    # (a segment sum) costs less on a CPU than gather_nd's scatter.
    rows = tf.reshape(image, tf.stack([-1, shape[3]]))
    first_row = tf.reshape(tf.range(batch) * (height * width), [-1, 1, 1])
    out = 0.0
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
      for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        row = (first_row + tf.clip_by_value(yi, 0, height - 1) * width +
               tf.clip_by_value(xi, 0, width - 1))
        weight = wx * wy * tf.cast(inside, image.dtype)
        out += tf.gather(rows, row) * weight[..., None]
    return out
