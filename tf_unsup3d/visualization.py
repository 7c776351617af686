"""Pictures of the factors: depth, normal and confidence maps as RGB, image grids."""

import io

import numpy as np
import PIL.Image
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import shapes
from tf_unsup3d import value_ranges


def depth_to_rgb(depth, min_depth, max_depth):
  """Colour-maps depth `[B, H, W]` to `[B, H, W, 3]` in [0, 1] (near = bright).

  Uses a perceptually ordered blue-to-yellow ramp; values outside
  [min_depth, max_depth] saturate.
  """
  with tf.name_scope("depth_to_rgb"):
    t = (max_depth - tf.convert_to_tensor(depth, tf.float32)) / (
        max_depth - min_depth)
    t = tf.clip_by_value(t, 0.0, 1.0)[..., None]
    # Piecewise-linear approximation of viridis through 5 anchors.
    anchors = tf.constant([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546],
                           [0.128, 0.567, 0.551], [0.369, 0.789, 0.383],
                           [0.993, 0.906, 0.144]])
    position = t * 4.0
    low = tf.clip_by_value(tf.floor(position), 0.0, 3.0)
    frac = position - low
    low = tf.cast(low[..., 0], tf.int32)
    return (tf.gather(anchors, low) * (1.0 - frac) +
            tf.gather(anchors, low + 1) * frac)


def normal_to_rgb(normal):
  """Maps unit normals `[B, H, W, 3]` to RGB `[B, H, W, 3]` in [0, 1].

  The camera-facing convention of common normal maps: x right to red, y up
  to green, facing the camera to blue (DESIGN normals point away, so z is
  negated along with y).
  """
  with tf.name_scope("normal_to_rgb"):
    flipped = normal * tf.constant([1.0, -1.0, -1.0])
    return tf.clip_by_value(value_ranges.to_unit(flipped), 0.0, 1.0)


def gray_to_rgb(image, low=0.0, high=1.0):
  """Single-channel `[B, H, W]` or `[B, H, W, 1]` in [low, high] -> RGB [0, 1]."""
  image = tf.convert_to_tensor(image, tf.float32)
  if image.shape.rank == 3:
    image = image[..., None]
  image = tf.clip_by_value((image - low) / (high - low), 0.0, 1.0)
  return tf.tile(image, [1, 1, 1, 3])


def image_grid(columns, pad=2):
  """Lays out rows of images: one row per example, one column per entry.

  Args:
    columns: list of `[B, H, W, 3]` arrays in [0, 1], all the same shape.
    pad: white pixels between tiles.

  Returns:
    `[B (H + pad) + pad, K (W + pad) + pad, 3]` uint8 NumPy image.
  """
  columns = [np.clip(np.asarray(c, np.float32), 0.0, 1.0) for c in columns]
  batch, height, width, _ = columns[0].shape
  for c in columns:
    if c.shape != columns[0].shape:
      raise ValueError(f"All grid columns need shape {columns[0].shape}, got "
                       f"{c.shape}.")
  grid = np.ones((batch * (height + pad) + pad,
                  len(columns) * (width + pad) + pad, 3), np.float32)
  for i in range(batch):
    for j, column in enumerate(columns):
      y, x = pad + i * (height + pad), pad + j * (width + pad)
      grid[y:y + height, x:x + width] = column[i]
  return np.round(grid * 255.0).astype(np.uint8)


def encode_gif(frames, frame_ms=100):
  """Encodes `[T, H, W, 3]` frames in [0, 1] as a looping animated GIF.

  Returns:
    The GIF file's bytes (TensorFlow can decode GIFs but not encode them,
    so Pillow does it). A frame identical to the one before it is merged
    into it, its display time added.
  """
  frames = np.asarray(frames, np.float32)
  shapes.check_shape(frames, "frames", ("T", "H", "W", 3))
  if not len(frames):
    raise ValueError(f"frames must hold at least one frame, got shape "
                     f"{frames.shape}.")
  frames = np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
  images = [PIL.Image.fromarray(f) for f in frames]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True,
                 append_images=images[1:], duration=int(frame_ms), loop=0)
  return buffer.getvalue()


def write_png(path, image):
  """Writes a uint8 `[H, W, C]` image to `path` atomically (temp file + rename)."""
  atomic_files.write_bytes(
      path, tf.io.encode_png(np.asarray(image, np.uint8)).numpy())
