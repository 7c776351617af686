"""Depth rasterisation of triangle meshes: a visibility pass and differentiable barycentrics.

TensorFlow Graphics' compiled rasteriser op does not load on current
TensorFlow (DESIGN section 4), so the visibility pass (which triangle is
nearest at each pixel) is written here in pure TensorFlow: a z-buffer over
the (triangle, pixel) pairs of each triangle's bounding box, vectorised over
the batch, in fixed-size steps so that memory stays bounded and it compiles
under XLA. It carries no gradient. Gradients come from the perspective-correct
barycentrics of each pixel centre in the triangle it picked
(`pixel_barycentrics`: TFG's `differentiable_barycentrics` in closed form,
tested equal to it), which interpolate the corners' depth.
"""

import tensorflow as tf
from tensorflow_graphics.rendering import barycentrics
from tensorflow_graphics.rendering import framebuffer as fb_lib

from tf_unsup3d import shapes
from tf_unsup3d.rendering import camera

# Normalised-barycentric tolerance of the inside test. Shared edges pass
# through pixel centres on grid meshes; without slack, rounding leaves cracks.
INSIDE_TOLERANCE = 1e-5
# Triangles whose candidate box is at most this many pixels a side take the
# window pass (a grid mesh seen near frontally has boxes of 2 pixel
# centres); wider ones take the ragged pass. 0 (every triangle through the
# ragged pass) is the default: on training's turned views the window pass
# costs more than it saves (benchmarks/rasterizer_scaling.py, "training
# case": 0.060 s against 0.111-0.179 s with window 2, 32 maps at 64 px).
DEFAULT_WINDOW = 0
# (triangle, pixel) candidates per step of either pass: bounds the memory of
# the visibility pass (~150 bytes per candidate) whatever the view.
DEFAULT_CANDIDATE_CHUNK = 1 << 17
# Bounding boxes grow by this many pixels plus INSIDE_TOLERANCE times their
# diagonal, so that every pixel the tolerant inside test accepts is a
# candidate: a pixel with barycentric b_i = -t lies t * altitude_i outside
# edge i, and no altitude exceeds the box diagonal.
_BBOX_SLACK = 1e-3
# Per-triangle plane coefficients (`_plane_coefficients`), and those of a
# triangle that is never in front: 1/z = -1 everywhere (slot 6).
NUM_COEFFICIENTS = 9
INVALID_PLANE = (0.0,) * 6 + (-1.0, 0.0, 0.0)


def grid_faces(height, width):
  """Two triangles per pixel quad of an `height` x `width` vertex grid.

  Vertex (i, j) has index i * width + j. Quads split along their
  top-right / bottom-left diagonal, the reference implementation's topology:
  first all (tl, bl, tr) triangles, then all (tr, bl, br) triangles.

  Returns:
    `[2 (H - 1) (W - 1), 3]` int32 vertex indices.
  """
  index = tf.reshape(tf.range(height * width, dtype=tf.int32), [height, width])
  tl, tr = index[:-1, :-1], index[:-1, 1:]
  bl, br = index[1:, :-1], index[1:, 1:]
  first = tf.reshape(tf.stack([tl, bl, tr], axis=-1), [-1, 3])
  second = tf.reshape(tf.stack([tr, bl, br], axis=-1), [-1, 3])
  return tf.concat([first, second], axis=0)


def _corners(screen, faces, grid=None):
  """Each triangle's corner coordinates, one `[B, T]` tensor per value.

  Built per coordinate so that everything downstream works on contiguous
  `[B, T]` tensors: reductions over a corner axis of 3 and slices of a
  trailing (u, v, z) axis cost several times more on a CPU. For a grid mesh
  (`grid` given) the corners are slices of the vertex grid, in
  `grid_faces`' order, instead of gathers.

  Args:
    screen: `[B, V, 3]` vertices (u, v, z).
    faces: `[T, 3]` int32 vertex indices.
    grid: None, or (rows, cols) when `faces` is `grid_faces(rows, cols)`.

  Returns:
    (u, v, z): each a tuple of three `[B, T]` float32, corners 0, 1, 2.
  """
  if grid is None:
    columns = tf.unstack(faces, axis=-1)
    return tuple(tuple(tf.gather(screen[..., k], c, axis=1) for c in columns)
                 for k in range(3))
  rows, cols = grid
  if screen.shape[1] is not None and screen.shape[1] != rows * cols:
    raise ValueError(f"grid={grid!r} needs {rows * cols} vertices, screen "
                     f"has {screen.shape[1]}: pass the grid's own shape.")
  quads = (rows - 1) * (cols - 1)
  values = tf.unstack(tf.reshape(tf.transpose(screen, [2, 0, 1]),
                                 [3, -1, rows, cols]))

  def triangles(value):
    tl, tr = value[:, :-1, :-1], value[:, :-1, 1:]
    bl, br = value[:, 1:, :-1], value[:, 1:, 1:]
    both = lambda a, b: tf.concat([tf.reshape(a, [-1, quads]),
                                   tf.reshape(b, [-1, quads])], axis=1)
    # (tl, bl, tr) then (tr, bl, br), as `grid_faces`.
    return both(tl, tr), both(bl, bl), both(tr, br)

  return tuple(triangles(value) for value in values)


def _plane_coefficients(corners):
  """Affine coefficients of two barycentrics and of 1/z about vertex 0.

  Each plane is evaluated relative to the triangle's first vertex (u0, v0),
  where b1 = b2 = 0 and 1/z = 1/z0: with offsets of a few pixels rather
  than of the image size, float32 keeps the barycentrics of thin triangles
  accurate at 256 px. b0 is 1 - b1 - b2.

  Args:
    corners: `_corners` of the triangles.

  Returns:
    `[B, T, NUM_COEFFICIENTS]`: (A, B) of b1, b2 and 1/z, then 1/z at
    vertex 0, then (u0, v0), so that f(x, y) = f(u0, v0) + A (x - u0) +
    B (y - v0). Degenerate triangles and those with a vertex at z <= 0 get
    1/z = -1 everywhere (`INVALID_PLANE`): never in front.
  """
  (u0, u1, u2), (v0, v1, v2), (z0, z1, z2) = corners
  du1, dv1, du2, dv2 = u1 - u0, v1 - v0, u2 - u0, v2 - v0
  area = du1 * dv2 - du2 * dv1
  valid = (tf.abs(area) > 1e-10) & (tf.minimum(tf.minimum(z0, z1), z2) > 1e-6)
  inv_area = tf.where(valid, 1.0 / tf.where(valid, area, 1.0), 0.0)
  # b_i = ((u_j - x)(v_k - y) - (u_k - x)(v_j - y)) / area for (i, j, k)
  # cyclic, with vertex 0 at the origin.
  b1 = (dv2 * inv_area, -du2 * inv_area)
  b2 = (-dv1 * inv_area, du1 * inv_area)
  w0 = 1.0 / z0
  dw1, dw2 = 1.0 / z1 - w0, 1.0 / z2 - w0
  inv_z = [b1[k] * dw1 + b2[k] * dw2 for k in range(2)]
  return tf.stack([*b1, *b2, *inv_z, tf.where(valid, w0, -1.0), u0, v0],
                  axis=-1)


def _pixel_spans(corners, height, width):
  """First candidate pixel and pixel count along x and y of each triangle.

  Candidates are the pixel centres inside the triangle's bounding box (with
  a little slack for the inside-test tolerance), clipped to the image.
  Triangles with non-finite vertices get no candidates.

  Args:
    corners: `_corners` of the triangles.
    height, width: raster size in pixels.

  Returns:
    Four `[B, T]` int32 tensors: x0, y0, span_x, span_y.
  """
  # 0 c is 0 for finite c and NaN otherwise: their sum is finite exactly
  # when every corner coordinate is (a sum of the coordinates themselves
  # could overflow).
  finite = tf.math.is_finite(tf.add_n([0.0 * c for xs in corners
                                       for c in xs]))
  boxes = []
  for u0, u1, u2 in corners[:2]:
    u0, u1, u2 = (tf.where(finite, u, 0.0) for u in (u0, u1, u2))
    boxes.append((tf.minimum(tf.minimum(u0, u1), u2),
                  tf.maximum(tf.maximum(u0, u1), u2)))
  (low_x, high_x), (low_y, high_y) = boxes
  slack = _BBOX_SLACK + INSIDE_TOLERANCE * tf.sqrt(
      tf.square(high_x - low_x) + tf.square(high_y - low_y))
  spans = []
  for (low, high), size in zip(boxes, (width, height)):
    low = tf.math.ceil(low - slack)
    high = tf.math.floor(high + slack)
    low = tf.cast(tf.clip_by_value(low, 0.0, size), tf.int32)
    high = tf.cast(tf.clip_by_value(high, -1.0, size - 1.0), tf.int32)
    span = tf.where(finite, tf.maximum(high - low + 1, 0), 0)
    spans.append((low, span))
  (x0, span_x), (y0, span_y) = spans
  return x0, y0, span_x, span_y


def _triangle_boxes(screen, faces, height, width, grid=None):
  """Each triangle's plane coefficients and candidate box (no gradient).

  Args:
    screen, faces, height, width, grid: as `visible_triangles`.

  Returns:
    (coef, spans): coef `[B, T, NUM_COEFFICIENTS]` `_plane_coefficients`;
    spans `_pixel_spans`' four `[B, T]` int32 tensors.
  """
  screen = tf.stop_gradient(tf.convert_to_tensor(screen, tf.float32))
  faces = tf.convert_to_tensor(faces, tf.int32)
  shapes.check_shape(screen, "screen", ("B", "V", 3))
  corners = _corners(screen, faces, grid)
  return (_plane_coefficients(corners),
          _pixel_spans(corners, height, width))


def _pack_keys(score, triangle_ids):
  """Z-buffer keys: ordered by 1/z, then by the smaller triangle index.

  A positive float32's bits, read as an integer, grow with its value, so
  (bits << 32) + (int32 max - id) has the order of (1/z, -id): one max
  picks the nearest triangle and, among equal 1/z, the smallest index.

  Args:
    score: `[N]` float32 1/z of a candidate, <= 0 where not inside.
    triangle_ids: `[N]` int32 triangle index (0 .. T - 1).

  Returns:
    `[N]` int64 keys, -1 for candidates that are not inside.
  """
  bits = tf.cast(tf.bitcast(score, tf.int32), tf.int64)
  key = bits * (1 << 32) + tf.cast(tf.int32.max - triangle_ids, tf.int64)
  return tf.where(score > 0.0, key, tf.constant(-1, tf.int64))


def _unpack_keys(keys):
  """Inverse of `_pack_keys`: (covered, triangle id, 0 where not covered)."""
  covered = keys > 0
  low = tf.cast(tf.bitwise.bitwise_and(keys, (1 << 32) - 1), tf.int32)
  return covered, tf.where(covered, tf.int32.max - low, 0)


def _unpack_inverse_depth(keys):
  """The winning candidate's 1/z of each `_pack_keys` key (1 where none)."""
  bits = tf.cast(tf.bitwise.right_shift(tf.maximum(keys, 0), 32), tf.int32)
  return tf.where(keys > 0, tf.bitcast(bits, tf.float32), 1.0)


def _scores(coef, px, py):
  """1/z of each candidate pixel, -1 where the inside test fails.

  Args:
    coef: `[..., NUM_COEFFICIENTS]` `_plane_coefficients`, broadcast
      against the pixels.
    px, py: `[...]` int32 pixel column and row.
  """
  c = tf.unstack(coef, axis=-1)
  dx = tf.cast(px, tf.float32) - c[7]
  dy = tf.cast(py, tf.float32) - c[8]
  b1 = c[0] * dx + c[1] * dy
  b2 = c[2] * dx + c[3] * dy
  inside = tf.minimum(tf.minimum(1.0 - b1 - b2, b1), b2)
  return tf.where(inside >= -INSIDE_TOLERANCE, c[6] + c[4] * dx + c[5] * dy,
                  -1.0)


def _window_pass(keys, coef, x0, y0, size, num_faces, window, height, width,
                 candidate_chunk):
  """Z-buffers the triangles whose box fits `window`, window^2 pixels each.

  Tests the `window` x `window` pixels from each such triangle's first
  candidate pixel, `candidate_chunk // window^2` triangles per step.

  Args:
    keys: `[B H W]` int64 z-buffer keys so far.
    coef: `[B T, NUM_COEFFICIENTS]` plane coefficients, flattened over
      (image, triangle).
    x0, y0, size: `[B T]` int32 first candidate pixel and box side.
    num_faces: T.

  Returns:
    The updated `[B H W]` keys.
  """
  with tf.name_scope("window_pass"):
    n = tf.shape(x0)[0]
    # As in `_ragged_pass`: at least B H W / 2 candidates per step.
    chunk = tf.maximum(candidate_chunk, tf.size(keys) // 2) // window**2
    length = tf.minimum(chunk, n)
    offsets = tf.range(window * window, dtype=tf.int32)

    def body(i, keys):
      # The last step overlaps the one before it: a z-buffer max does not
      # mind seeing a candidate twice.
      start = tf.minimum(i * chunk, n - length)
      flat = start + tf.range(length)
      pick = lambda t: tf.gather(t, flat)
      px = pick(x0)[:, None] + offsets % window  # [chunk, window^2]
      py = pick(y0)[:, None] + offsets // window
      in_image = (px < width) & (py < height)
      score = _scores(pick(coef)[:, None], px, py)
      score = tf.where(in_image & (pick(size) <= window)[:, None], score,
                       -1.0)
      pixel = ((flat // num_faces)[:, None] * height +
               tf.minimum(py, height - 1)) * width + tf.minimum(px, width - 1)
      ids = tf.broadcast_to((flat % num_faces)[:, None], tf.shape(px))
      key = _pack_keys(tf.reshape(score, [-1]), tf.reshape(ids, [-1]))
      return i + 1, tf.maximum(keys, tf.math.unsorted_segment_max(
          key, tf.reshape(pixel, [-1]), tf.size(keys)))

    steps = (n + chunk - 1) // chunk
    _, keys = tf.while_loop(lambda i, _: i < steps, body,
                            (tf.constant(0), keys), parallel_iterations=1)
    return keys


def _ragged_pass(keys, coef, x0, y0, span_x, span_y, size, num_faces, window,
                 height, width, candidate_chunk):
  """Z-buffers every box pixel of the triangles wider than `window`.

  Triangle k owns the candidate slots [begins[k], begins[k] + count[k]),
  one per pixel of its clipped box (count = span_x span_y), begins being
  the running sum of the counts before it; a step takes `candidate_chunk`
  consecutive slots, finds each slot's triangle by counting the triangles
  that begin up to it and its pixel from the offset in the box. The work is
  the number of box pixels, whatever the view.

  Args:
    keys: `[B H W]` int64 z-buffer keys so far.
    coef: `[B T, NUM_COEFFICIENTS]` plane coefficients, flattened over
      (image, triangle).
    x0, y0, span_x, span_y, size: `[B T]` int32 candidate boxes.
    num_faces: T.

  Returns:
    The updated `[B H W]` keys.
  """
  with tf.name_scope("ragged_pass"):
    n = tf.shape(x0)[0]
    count = tf.where(size > window, span_x * span_y, 0)
    begins = tf.cumsum(tf.cast(count, tf.int64), exclusive=True)
    total = tf.reduce_sum(tf.cast(count, tf.int64))
    # Each step's z-buffer merge touches all B H W keys: steps of at least
    # half that many candidates keep it a constant share of the work.
    chunk = tf.maximum(candidate_chunk, tf.size(keys) // 2)
    chunk64 = tf.cast(chunk, tf.int64)
    # The triangles with candidates, in order ("live"): their begins
    # strictly increase, so at most `chunk` of them begin within a step,
    # and a step looks at a window of chunk + 1 of them (the one holding
    # its first slot, then those beginning in it) rather than at all B T.
    # Padding past the end keeps every window in range.
    has_slots = count > 0
    num_live = tf.reduce_sum(tf.cast(has_slots, tf.int32))
    rank = tf.cumsum(tf.cast(has_slots, tf.int32), exclusive=True)
    index = tf.range(n)
    live = tf.math.unsorted_segment_max(
        index, tf.where(has_slots, rank, n), n + 1)[:n]
    is_live = index < num_live
    live = tf.concat([tf.where(is_live, live, 0),
                      tf.zeros([chunk + 1], tf.int32)], 0)
    live_begins = tf.concat(
        [tf.where(is_live, tf.gather(begins, live[:n]), tf.int64.max),
         tf.fill([chunk + 1], tf.int64.max)], 0)
    boxes = tf.stack([x0, y0, span_x], axis=-1)  # one gather per step
    slots = tf.range(chunk)

    def body(i, first, keys):
      # first: live triangles beginning before this step's first slot.
      start = tf.cast(i, tf.int64) * chunk64
      valid = tf.cast(slots, tf.int64) < total - start
      near = tf.slice(live_begins, [first], [chunk + 1])
      here = near < start + chunk64
      begins_at = tf.math.unsorted_segment_sum(
          tf.cast(here, tf.int32),
          tf.cast(tf.where(here, near - start, chunk64), tf.int32),
          chunk + 1)[:chunk]
      held_by = tf.maximum(first - 1 + tf.cumsum(begins_at), 0)
      flat = tf.gather(live, held_by)
      local = slots - tf.cast(tf.gather(begins, flat) - start, tf.int32)
      box = tf.gather(boxes, flat)
      side = tf.maximum(box[:, 2], 1)
      px = box[:, 0] + local % side
      py = box[:, 1] + local // side
      score = _scores(tf.gather(coef, flat), px, py)
      key = _pack_keys(tf.where(valid, score, -1.0), flat % num_faces)
      pixel = tf.where(valid, ((flat // num_faces) * height + py) * width + px,
                       0)
      return (i + 1, first + tf.reduce_sum(tf.cast(here, tf.int32)),
              tf.maximum(keys, tf.math.unsorted_segment_max(
                  key, pixel, tf.size(keys))))

    steps = (total + chunk64 - 1) // chunk64
    _, _, keys = tf.while_loop(
        lambda i, *_: tf.cast(i, tf.int64) < steps, body,
        (tf.constant(0), tf.constant(0), keys), parallel_iterations=1)
    return keys


def visible_triangles(screen, faces, height, width, window=DEFAULT_WINDOW,
                      candidate_chunk=DEFAULT_CANDIDATE_CHUNK, grid=None):
  """The nearest triangle at each pixel centre (the visibility pass).

  A pixel is covered by a triangle when its normalised barycentrics are all
  >= -INSIDE_TOLERANCE; among covering triangles the one with the largest
  perspective-correct 1/z wins, ties going to the smallest triangle index.
  Both winding orders are rendered (no culling). No gradient.

  Each triangle is tested against the pixel centres of its bounding box
  (with slack for the tolerance, clipped to the image), and a max z-buffer
  over packed (1/z, -id) keys keeps the nearest, in steps of
  `candidate_chunk` (triangle, pixel) candidates. Every pixel of a box goes
  through a running sum of box sizes (`_ragged_pass`); with `window` > 0,
  triangles whose box is at most `window` pixels a side test a `window` x
  `window` square instead (`_window_pass`, dense: near frontal grid meshes
  are all there), into the same z-buffer. The cost is linear in the box pixels
  at every view, and the memory bounded by the chunk. Vectorised over the
  batch; compiles under XLA (dynamic trip counts, static step shapes).

  Args:
    screen: `[B, V, 3]` vertices as (u, v, z): pixel coordinates (pixel
      centres at integers) and camera depth z > 0.
    faces: `[T, 3]` int32 vertex indices.
    height, width: raster size in pixels (Python ints).
    window: box side (pixels) of the window pass; 0 sends every triangle
      through the ragged pass.
    candidate_chunk: candidates per step, at least B H W / 2 (memory
      ~150 B each).
    grid: (rows, cols) when `faces` is `grid_faces(rows, cols)` (V = rows
      cols): the same result, the corners sliced rather than gathered.

  Returns:
    triangle_id: `[B, H, W]` int32, 0 where nothing is covered.
    covered: `[B, H, W]` bool.
  """
  with tf.name_scope("visible_triangles"):
    covered, triangle_id = _unpack_keys(_visible_keys(
        screen, faces, height, width, window, candidate_chunk, grid))
    return triangle_id, covered


def _visible_keys(screen, faces, height, width, window, candidate_chunk,
                  grid=None):
  """`[B, H, W]` int64 z-buffer of `visible_triangles` (`_pack_keys`)."""
  coef, spans = _triangle_boxes(screen, faces, height, width, grid)
  batch, num_faces = tf.shape(coef)[0], coef.shape[1]
  coef = tf.reshape(coef, [-1, NUM_COEFFICIENTS])
  x0, y0, span_x, span_y = (tf.reshape(t, [-1]) for t in spans)
  size = tf.maximum(span_x, span_y)
  keys = tf.fill([batch * height * width], tf.constant(-1, tf.int64))
  if window > 0:
    keys = _window_pass(keys, coef, x0, y0, size, num_faces, window,
                        height, width, candidate_chunk)
  keys = _ragged_pass(keys, coef, x0, y0, span_x, span_y, size, num_faces,
                      window, height, width, candidate_chunk)
  return tf.reshape(keys, [batch, height, width])


def _pixel_corners(clip, pixel_faces):
  """`[B, H, W, 3, 3]` (x, y, w) of each pixel's triangle corners, checked."""
  shapes.check_shape(clip, "clip", ("B", "V", 4))
  shapes.check_shape(pixel_faces, "pixel_faces", ("B", "H", "W", 3))
  xyw = tf.gather(clip, [0, 1, 3], axis=-1)
  return tf.gather(xyw, pixel_faces, batch_dims=1)


def pixel_barycentrics(clip, pixel_faces):
  """Perspective-correct barycentrics of each pixel centre in its triangle.

  TFG's `differentiable_barycentrics` in closed form: with a triangle's
  clip-space corners v_i = (x_i, y_i, w_i) and a pixel centre
  p = (px, py, 1) in TFG's normalised coordinates, weight i is
  p . (v_j x v_k) over the sum of the three ((i, j, k) cyclic), Cramer's
  rule for the 3x3 system TFG inverts, whose determinant cancels in the
  normalisation. One gather of each pixel's corners and elementwise
  arithmetic, forward and backward, instead of TFG's per-triangle matrices
  gathered along their last axis under `vectorized_map`
  (benchmarks/step_split.py times both; tests hold them equal, values and
  gradients).

  Args:
    clip: `[B, V, 4]` clip-space (x, y, z, w) vertices (`camera.clip_space`).
    pixel_faces: `[B, H, W, 3]` int32 vertex ids of each pixel's triangle.

  Returns:
    weights: `[B, H, W, 3]` barycentrics summing to 1 (0 where the three
      edge values sum to 0, a degenerate triangle), differentiable w.r.t.
      `clip`; meaningful where the triangle covers the pixel.
    corners: `[B, H, W, 3, 3]` the corners' (x, y, w), corner-major.
  """
  with tf.name_scope("pixel_barycentrics"):
    corners = _pixel_corners(clip, pixel_faces)
    height, width = pixel_faces.shape[1], pixel_faces.shape[2]
    px, py = barycentrics.normalized_pixel_coordinates(width, height)
    v0, v1, v2 = tf.unstack(corners, axis=-2)

    def edge(a, b):  # p . (a x b), p = (px, py, 1)
      ax, ay, aw = tf.unstack(a, axis=-1)
      bx, by, bw = tf.unstack(b, axis=-1)
      return ((ay * bw - aw * by) * px + (aw * bx - ax * bw) * py +
              (ax * by - ay * bx))

    edges = tf.stack([edge(v1, v2), edge(v2, v0), edge(v0, v1)], axis=-1)
    weights = tf.math.divide_no_nan(
        edges, tf.reduce_sum(edges, axis=-1, keepdims=True))
    return weights, corners


def tfg_pixel_barycentrics(clip, pixel_faces):
  """`pixel_barycentrics` by TFG's `differentiable_barycentrics`.

  The reference the closed form is tested and timed against
  (tests/test_rasterizer.py, benchmarks/step_split.py): TFG gets each
  pixel's own triangle as a one-triangle-per-pixel list, pixel i reading
  entry i. Same arguments and results as `pixel_barycentrics`.
  """
  with tf.name_scope("tfg_pixel_barycentrics"):
    corners = _pixel_corners(clip, pixel_faces)
    batch = tf.shape(pixel_faces)[0]
    height, width = pixel_faces.shape[1], pixel_faces.shape[2]
    pixel_index = tf.reshape(tf.range(height * width, dtype=tf.int32),
                             [1, height, width, 1])
    framebuffer = fb_lib.Framebuffer(
        foreground_mask=tf.ones(tf.stack([batch, height, width, 1])),
        triangle_id=tf.broadcast_to(pixel_index,
                                    tf.stack([batch, height, width, 1])),
        vertex_ids=pixel_faces,
        barycentrics=fb_lib.RasterizedAttribute(
            tf.zeros(tf.stack([batch, height, width, 3])), None, None))
    framebuffer = barycentrics.differentiable_barycentrics(
        framebuffer, clip, tf.reshape(pixel_faces, [batch, -1, 3]))
    return framebuffer.barycentrics.value, corners


def rasterize_depth(points, faces, focal, principal_point, height, width,
                    background_depth, window=DEFAULT_WINDOW,
                    candidate_chunk=DEFAULT_CANDIDATE_CHUNK,
                    differentiable=True, grid=None):
  """Renders the camera depth of a mesh, differentiable w.r.t. its vertices.

  With `differentiable` False the depth is the visibility pass's own
  perspective-correct 1/z of the winning triangle at each pixel centre,
  inverted, and carries no gradient: the same depth (to float32 rounding)
  without the barycentrics and interpolation, for renderings that feed no
  gradient back (e.g. the re-rendered view term's inputs).

  Args:
    points: `[B, V, 3]` camera-space vertices (z > 0 in front).
    faces: `[T, 3]` int32 triangles shared by the batch.
    focal, principal_point: intrinsics in pixels.
    height, width: output size in pixels (Python ints).
    background_depth: depth written where no triangle is visible.
    window, candidate_chunk, grid: see `visible_triangles`.
    differentiable: False for a depth without gradient (above).

  Returns:
    depth: `[B, H, W]` nearest surface depth, `background_depth` elsewhere.
    covered: `[B, H, W]` bool foreground mask.
  """
  with tf.name_scope("rasterize_depth"):
    points = tf.convert_to_tensor(points, tf.float32)
    faces = tf.convert_to_tensor(faces, tf.int32)
    screen = tf.concat(
        [camera.project(points, focal, principal_point), points[..., 2:]], -1)
    if not differentiable:
      keys = _visible_keys(screen, faces, height, width, window,
                           candidate_chunk, grid)
      covered = keys > 0
      return (tf.where(covered, 1.0 / _unpack_inverse_depth(keys),
                       tf.cast(background_depth, tf.float32)), covered)
    triangle_id, covered = visible_triangles(
        screen, faces, height, width, window, candidate_chunk, grid)
    clip = camera.clip_space(points, focal, principal_point, height, width)
    weights, corners = pixel_barycentrics(clip, tf.gather(faces, triangle_id))
    # w = z in `camera.clip_space`: perspective-correct weights interpolate
    # the camera depth of the corners directly.
    depth = tf.reduce_sum(weights * corners[..., 2], axis=-1)
    return (tf.where(covered, depth, tf.cast(background_depth, tf.float32)),
            covered)
