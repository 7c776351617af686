"""Pinhole camera of DESIGN section 2, on TensorFlow Graphics' perspective model.

Pixel centres sit at integer coordinates: u (column, x) and v (row, y) in
[0, S - 1]; the principal point is the image centre ((W - 1) / 2, (H - 1) / 2)
and the focal length is f = (S - 1) / 2 / tan(fov / 2) in pixels.
"""

import math

import tensorflow as tf
from tensorflow_graphics.rendering.camera import perspective

from tf_unsup3d import shapes


def focal_length(image_size, fov):
  """Focal length in pixels for a square `image_size` image and `fov` degrees."""
  if fov <= 0 or fov >= 180:
    raise ValueError(f"fov must be in (0, 180) degrees, got {fov}.")
  return (image_size - 1) / 2.0 / math.tan(math.radians(fov) / 2.0)


def pixel_grid(height, width):
  """Pixel-centre coordinates `[H, W, 2]` holding (u, v) = (column, row)."""
  u, v = tf.meshgrid(tf.range(width, dtype=tf.float32),
                     tf.range(height, dtype=tf.float32))
  return tf.stack([u, v], axis=-1)


def _broadcast_intrinsics(like, focal, principal_point):
  # TFG's camera functions want identical batch dimensions on every argument.
  shape = tf.concat([tf.shape(like)[:-1], [2]], axis=0)
  focal = tf.broadcast_to(tf.constant(focal, tf.float32), shape)
  principal_point = tf.broadcast_to(
      tf.constant(principal_point, tf.float32), shape)
  return focal, principal_point


def lift(depth, focal, principal_point):
  """Lifts a depth map to camera-space points P = d K^-1 [u, v, 1]^T.

  Args:
    depth: `[B, H, W]` positive depth (z) per pixel.
    focal: (fx, fy) in pixels.
    principal_point: (cx, cy) in pixels.

  Returns:
    `[B, H, W, 3]` points (x right, y down, z forward).
  """
  with tf.name_scope("lift"):
    depth = tf.convert_to_tensor(depth, tf.float32)
    shapes.check_shape(depth, "depth", ("B", "H", "W"))
    height, width = tf.shape(depth)[1], tf.shape(depth)[2]
    grid = tf.broadcast_to(pixel_grid(height, width),
                           tf.concat([tf.shape(depth), [2]], axis=0))
    f, c = _broadcast_intrinsics(grid, focal, principal_point)
    return perspective.unproject(grid, depth[..., None], f, c)


def project(points, focal, principal_point):
  """Projects camera-space points `[..., 3]` to pixel coordinates `[..., 2]`."""
  with tf.name_scope("project"):
    points = tf.convert_to_tensor(points, tf.float32)
    f, c = _broadcast_intrinsics(points, focal, principal_point)
    return perspective.project(points, f, c)


def clip_space(points, focal, principal_point, height, width):
  """Homogeneous clip-space vertices for TensorFlow Graphics' rasteriser half.

  TFG evaluates pixel (i, j) at normalised coordinates ((2 j + 1) / W - 1,
  (2 i + 1) / H - 1), y pointing down. Choosing x_c = ((2 u + 1) / W - 1) z,
  y_c = ((2 v + 1) / H - 1) z and w = z, with (u, v) the projection of K,
  makes TFG's pixel centres coincide with the integer pixel centres of K, so
  there is no half-pixel shift between the two conventions.

  Args:
    points: `[B, V, 3]` camera-space vertices.
    focal, principal_point: intrinsics in pixels.
    height, width: the raster size in pixels.

  Returns:
    `[B, V, 4]` clip-space (x, y, z, w) vertices.
  """
  with tf.name_scope("clip_space"):
    x, y, z = tf.unstack(points, axis=-1)
    fx, fy = focal
    cx, cy = principal_point
    xc = (2.0 * fx / width) * x + ((2.0 * cx + 1.0) / width - 1.0) * z
    yc = (2.0 * fy / height) * y + ((2.0 * cy + 1.0) / height - 1.0) * z
    return tf.stack([xc, yc, z, z], axis=-1)
