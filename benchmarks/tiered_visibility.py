"""The tiered visibility pass that `rasterizer.visible_triangles` replaced.

Kept as the same-run baseline of benchmarks/rasterizer_scaling.py: tiers of
fixed (box side, triangles per image) windows, and an exhaustive
O(H W T) z-buffer when an image has more wide triangles than a tier holds.
Same answers as `rasterizer.visible_triangles`.
"""

import math

import tensorflow as tf

from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import rasterizer

# Tiers of the fast visibility path: (box side, triangles per image). A grid
# mesh seen near frontally has boxes of 2 pixel centres; stretched triangles
# at depth edges take the wider, smaller tiers.
DEFAULT_WINDOWS = ((2, None), (6, 4096), (16, 1024), (32, 256), (None, 64))
# The inside test (`rasterizer._scores`), plane coefficients and bounding
# boxes are the current pass's own.


def _window_candidates(coef, x0, y0, triangle_ids, window, height, width):
  """Scores every pixel of a `window` x `window` box per triangle.

  Args:
    coef: `[C, B, N]` plane coefficients (`rasterizer._triangle_boxes`,
      C = `rasterizer.NUM_COEFFICIENTS`).
    x0, y0: `[B, N]` top-left candidate pixel per triangle.
    triangle_ids: `[B, N]` the triangles' indices.
    window: box side in pixels.

  Returns:
    Flat `[B N window^2]` tensors: 1/z score (-1 where not inside), triangle
    id and pixel index b * H * W + y * W + x.
  """
  offsets = tf.range(window * window, dtype=tf.int32)
  px = x0[..., None] + offsets % window  # [B, N, K^2]
  py = y0[..., None] + offsets // window
  in_image = (px < width) & (py < height)
  score = rasterizer._scores(  # pylint: disable=protected-access
      tf.transpose(coef, [1, 2, 0])[:, :, None], px, py)
  score = tf.where(in_image, score, -1.0)
  batch = tf.shape(px)[0]
  image_index = tf.range(batch, dtype=tf.int32)[:, None, None]
  pixel = (image_index * height + tf.minimum(py, height - 1)) * width
  pixel += tf.minimum(px, width - 1)
  ids = tf.broadcast_to(triangle_ids[..., None], tf.shape(px))
  return (tf.reshape(score, [-1]), tf.reshape(ids, [-1]),
          tf.reshape(pixel, [-1]))


def _zbuffer_from_candidates(candidates, num_pixels):
  """Per pixel: the largest 1/z and, among equal ones, the smallest triangle.

  A z-buffer through segment reductions over (score, id, pixel) triples.
  """
  score, ids, pixel = (tf.concat(parts, axis=0) for parts in zip(*candidates))
  best = tf.math.unsorted_segment_max(score, pixel, num_pixels)
  winners = (score > 0.0) & (score >= tf.gather(best, pixel))
  best_id = tf.math.unsorted_segment_min(
      tf.where(winners, ids, tf.int32.max), pixel, num_pixels)
  return best, best_id


def _zbuffer_dense(coef, height, width, triangle_chunk):
  """The same z-buffer over every (pixel, triangle) pair, chunk by chunk."""
  batch, num_faces = tf.shape(coef)[1], coef.shape[2]
  num_chunks = max(1, math.ceil(num_faces / triangle_chunk))
  padding = num_chunks * triangle_chunk - num_faces
  # Padding triangles are never in front (`rasterizer.INVALID_PLANE`).
  pad = tf.constant(rasterizer.INVALID_PLANE)[:, None, None]
  coef = tf.concat([coef, tf.tile(pad, [1, batch, padding])], axis=2)
  coef = tf.reshape(coef, [rasterizer.NUM_COEFFICIENTS, batch, num_chunks,
                           triangle_chunk])
  coef = tf.transpose(coef, [2, 0, 1, 3])  # [chunks, C, B, Tc]
  pixels = tf.reshape(camera.pixel_grid(height, width), [-1, 2])
  x = pixels[None, :, None, 0]  # [1, P, 1]
  y = pixels[None, :, None, 1]

  def body(i, best_inv_z, best_id):
    c = tf.transpose(coef[i], [1, 2, 0])[:, None]  # [B, 1, Tc, C]
    score = rasterizer._scores(c, x, y)  # pylint: disable=protected-access
    chunk_best = tf.reduce_max(score, axis=-1)
    ids = i * triangle_chunk + tf.range(triangle_chunk, dtype=tf.int32)
    winners = (score > 0.0) & (score >= chunk_best[..., None])
    chunk_id = tf.reduce_min(tf.where(winners, ids, tf.int32.max), axis=-1)
    better = chunk_best > best_inv_z  # strict: earlier chunks win ties
    return (i + 1, tf.where(better, chunk_best, best_inv_z),
            tf.where(better, chunk_id, best_id))

  init = (tf.constant(0), tf.fill([batch, height * width], -1.0),
          tf.zeros([batch, height * width], tf.int32))
  _, best_inv_z, best_id = tf.while_loop(
      lambda i, *_: i < num_chunks, body, init, parallel_iterations=1)
  return tf.reshape(best_inv_z, [-1]), tf.reshape(best_id, [-1])


def visible_triangles(screen, faces, height, width, triangle_chunk=128,
                      windows=DEFAULT_WINDOWS):
  """The nearest triangle at each pixel centre (the visibility pass).

  A pixel is covered by a triangle when its normalised barycentrics are all
  >= -rasterizer.INSIDE_TOLERANCE; among covering triangles the one with the
  largest perspective-correct 1/z wins, ties going to the smallest triangle
  index. Both winding orders are rendered (no culling). No gradient.

  Static shapes throughout (it compiles under XLA), vectorised over the
  batch and the triangles. Fast path, in tiers: `windows` lists
  (box side in pixels, how many triangles per image); each tier tests the
  pixels of a box of that side at the bounding box of that many triangles,
  the ones with the largest boxes (None: every triangle; a None side: the
  whole image). A segment-max z-buffer merges all candidates. Only as many
  tiers run as the batch's widest triangles need; where some image has more
  triangles wider than a tier's box than the next tier takes, every
  (pixel, triangle) pair is tested instead, `triangle_chunk` triangles at a
  time (O(H W T) per image). All paths give the same answer.

  Args:
    screen: `[B, V, 3]` vertices as (u, v, z): pixel coordinates (pixel
      centres at integers) and camera depth z > 0.
    faces: `[T, 3]` int32 vertex indices.
    height, width: raster size in pixels (Python ints).
    triangle_chunk: triangles per step of the exhaustive path (memory
      ~16 B H W triangle_chunk bytes).
    windows: the fast path's tiers, box sides increasing.

  Returns:
    triangle_id: `[B, H, W]` int32, 0 where nothing is covered.
    covered: `[B, H, W]` bool.
  """
  with tf.name_scope("visible_triangles"):
    coef, (x0, y0, span_x, span_y) = rasterizer._triangle_boxes(  # pylint: disable=protected-access
        screen, faces, height, width)
    batch, num_faces = tf.shape(coef)[0], coef.shape[1]
    num_pixels = batch * height * width
    coef = tf.transpose(coef, [2, 0, 1])  # [C, B, T]
    size = tf.maximum(span_x, span_y)  # <= max(H, W): spans are clipped.
    tiers = [(side or max(height, width), min(count or num_faces, num_faces))
             for side, count in windows]
    # Fewest tiers that take every triangle: tiers[:i + 1] suffice when no
    # box is wider than tier i's and, for each j < i, the triangles wider
    # than tier j's box fit in tier j + 1. Otherwise: the exhaustive path.
    widest = tf.reduce_max(size)
    fits_so_far = tf.constant(True)
    usable = []
    for i, (side, _) in enumerate(tiers):
      usable.append(fits_so_far & (widest <= side))
      if i + 1 < len(tiers):
        wider = tf.reduce_sum(tf.cast(size > side, tf.int32), axis=1)
        fits_so_far &= tf.reduce_all(wider <= tiers[i + 1][1])
    branch = tf.reduce_min(tf.where(tf.stack(usable),
                                    tf.range(len(tiers), dtype=tf.int32),
                                    len(tiers)))

    def windowed(num_tiers):
      candidates = []
      for side, count in tiers[:num_tiers]:
        ids = tf.math.top_k(size, k=count, sorted=False).indices
        pick = lambda t, ids=ids: tf.gather(t, ids, axis=-1, batch_dims=1)
        tier_coef = tf.transpose(pick(tf.transpose(coef, [1, 0, 2])),
                                 [1, 0, 2])
        candidates.append(_window_candidates(
            tier_coef, pick(x0), pick(y0), ids, side, height, width))
      return _zbuffer_from_candidates(candidates, num_pixels)

    branches = [lambda n=n: windowed(n) for n in range(1, len(tiers) + 1)]
    branches.append(lambda: _zbuffer_dense(coef, height, width,
                                           triangle_chunk))
    best_inv_z, best_id = tf.switch_case(branch, branches)
    covered = tf.reshape(best_inv_z > 0.0, [batch, height, width])
    triangle_id = tf.reshape(best_id, [batch, height, width])
    return tf.where(covered, triangle_id, 0), covered
