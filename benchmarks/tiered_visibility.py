"""The tiered visibility pass that `rasterizer.visible_triangles` replaced.

Kept as the same-run baseline of benchmarks/rasterizer_scaling.py: tiers of
fixed (box side, triangles per image) windows, and an exhaustive
O(H W T) z-buffer when an image has more wide triangles than a tier holds.
Same answers as `rasterizer.visible_triangles`.
"""

import math

import tensorflow as tf

from tf_unsup3d import shapes
from tf_unsup3d.rendering import camera

# Normalised-barycentric tolerance of the inside test. Shared edges pass
# through pixel centres on grid meshes; without slack, rounding leaves cracks.
INSIDE_TOLERANCE = 1e-5
# Tiers of the fast visibility path: (box side, triangles per image). A grid
# mesh seen near frontally has boxes of 2 pixel centres; stretched triangles
# at depth edges take the wider, smaller tiers (benchmarks/forward_backward.py).
DEFAULT_WINDOWS = ((2, None), (6, 4096), (16, 1024), (32, 256), (None, 64))
# Bounding boxes grow by this many pixels plus INSIDE_TOLERANCE times their
# diagonal, so that every pixel the tolerant inside test accepts is a
# candidate: a pixel with barycentric b_i = -t lies t * altitude_i outside
# edge i, and no altitude exceeds the box diagonal.
_BBOX_SLACK = 1e-3


def _plane_coefficients(screen, faces):
  """Affine coefficients of the barycentrics and of 1/z over the screen.

  Returns `[12, B, T]`: (A, B, C) of b0, b1, b2 and 1/z, so that
  f(x, y) = A x + B y + C at pixel (x, y). Degenerate triangles get
  coefficients that fail every inside test.
  """
  tri = tf.gather(screen, faces, axis=1)  # [B, T, 3 vertices, (u, v, z)]
  u0, u1, u2 = tf.unstack(tri[..., 0], axis=-1)
  v0, v1, v2 = tf.unstack(tri[..., 1], axis=-1)
  z0, z1, z2 = tf.unstack(tri[..., 2], axis=-1)
  area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
  valid = (tf.abs(area) > 1e-10) & (tf.minimum(tf.minimum(z0, z1), z2) > 1e-6)
  inv_area = tf.where(valid, 1.0 / tf.where(valid, area, 1.0), 0.0)
  # b_i = ((u_j - x)(v_k - y) - (u_k - x)(v_j - y)) / area for (i, j, k)
  # cyclic; C is written as u_j (v_k - v_j) - v_j (u_k - u_j) to keep its
  # rounding error proportional to the edge length.
  coefficients = []
  for (uj, vj, uk, vk) in ((u1, v1, u2, v2), (u2, v2, u0, v0),
                           (u0, v0, u1, v1)):
    coefficients.append([(vj - vk) * inv_area, (uk - uj) * inv_area,
                         (uj * (vk - vj) - vj * (uk - uj)) * inv_area])
  # Degenerate triangles: b0 = -1 everywhere.
  coefficients[0][2] = tf.where(valid, coefficients[0][2], -1.0)
  inv_z = [sum(coefficients[i][k] / z for i, z in enumerate((z0, z1, z2)))
           for k in range(3)]
  coefficients.append(inv_z)
  return tf.stack([c for row in coefficients for c in row], axis=0)


def _pixel_spans(screen, faces, height, width):
  """First candidate pixel and pixel count along x and y of each triangle.

  Candidates are the pixel centres inside the triangle's bounding box (with
  a little slack for the inside-test tolerance), clipped to the image.
  Triangles with non-finite vertices get no candidates.

  Returns:
    Four `[B, T]` int32 tensors: x0, y0, span_x, span_y.
  """
  tri = tf.gather(screen, faces, axis=1)  # [B, T, 3, 3]
  finite = tf.reduce_all(tf.math.is_finite(tri), axis=[-2, -1])
  coords = tf.where(finite[..., None, None], tri[..., :2], 0.0)
  box_low = tf.reduce_min(coords, axis=-2)  # [B, T, 2]
  box_high = tf.reduce_max(coords, axis=-2)
  slack = _BBOX_SLACK + INSIDE_TOLERANCE * tf.norm(box_high - box_low,
                                                   axis=-1)
  spans = []
  for axis, size in ((0, width), (1, height)):
    low = tf.math.ceil(box_low[..., axis] - slack)
    high = tf.math.floor(box_high[..., axis] + slack)
    low = tf.cast(tf.clip_by_value(low, 0.0, size), tf.int32)
    high = tf.cast(tf.clip_by_value(high, -1.0, size - 1.0), tf.int32)
    span = tf.where(finite, tf.maximum(high - low + 1, 0), 0)
    spans.append((low, span))
  (x0, span_x), (y0, span_y) = spans
  return x0, y0, span_x, span_y


def _window_candidates(coef, x0, y0, triangle_ids, window, height, width):
  """Scores every pixel of a `window` x `window` box per triangle.

  Args:
    coef: `[12, B, N]` plane coefficients (centred pixel coordinates).
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
  x = tf.cast(px, tf.float32) - (width - 1) / 2.0
  y = tf.cast(py, tf.float32) - (height - 1) / 2.0
  c = coef[..., None]  # [12, B, N, 1]
  planes = [c[3 * k] * x + c[3 * k + 1] * y + c[3 * k + 2]
            for k in range(4)]
  inside = tf.minimum(tf.minimum(planes[0], planes[1]), planes[2])
  inside = (inside >= -INSIDE_TOLERANCE) & in_image
  score = tf.where(inside, planes[3], -1.0)
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
  # Padding triangles get b0 = -1 everywhere: never inside.
  pad = tf.one_hot(2, 12, on_value=-1.0, off_value=0.0)[:, None, None]
  coef = tf.concat([coef, tf.tile(pad, [1, batch, padding])], axis=2)
  coef = tf.reshape(coef, [12, batch, num_chunks, triangle_chunk])
  coef = tf.transpose(coef, [2, 0, 1, 3])  # [chunks, 12, B, Tc]
  center = tf.constant([(width - 1) / 2.0, (height - 1) / 2.0])
  pixels = tf.reshape(camera.pixel_grid(height, width) - center, [-1, 2])
  x = pixels[None, :, None, 0]  # [1, P, 1]
  y = pixels[None, :, None, 1]

  def body(i, best_inv_z, best_id):
    c = coef[i][:, :, None, :]  # [12, B, 1, Tc]
    planes = [c[3 * k] * x + c[3 * k + 1] * y + c[3 * k + 2] for k in range(4)]
    inside = tf.minimum(tf.minimum(planes[0], planes[1]), planes[2])
    inside = inside >= -INSIDE_TOLERANCE
    score = tf.where(inside, planes[3], -1.0)  # [B, P, Tc]; 1/z > 0 inside
    chunk_best = tf.reduce_max(score, axis=-1)
    ids = i * triangle_chunk + tf.range(triangle_chunk, dtype=tf.int32)
    winners = inside & (score >= chunk_best[..., None])
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
  >= -INSIDE_TOLERANCE; among covering triangles the one with the largest
  perspective-correct 1/z wins, ties going to the smallest triangle index.
  Both winding orders are rendered (no culling). No gradient.

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
    screen = tf.stop_gradient(tf.convert_to_tensor(screen, tf.float32))
    faces = tf.convert_to_tensor(faces, tf.int32)
    shapes.check_shape(screen, "screen", ("B", "V", 3))
    batch = tf.shape(screen)[0]
    num_faces = faces.shape[0]
    num_pixels = batch * height * width
    # Centre the screen on the image so the coefficients stay small.
    center = tf.constant([(width - 1) / 2.0, (height - 1) / 2.0, 0.0])
    coef = _plane_coefficients(screen - center, faces)  # [12, B, T]
    x0, y0, span_x, span_y = _pixel_spans(screen, faces, height, width)
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
