"""Visibility pass and depth rasteriser against a brute-force NumPy z-buffer."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import rasterizer
from tf_unsup3d.rendering import transforms

FOV = 10.0
ROT_CENTER = 1.0
BACKGROUND = 10.0
# Every triangle through the ragged pass (no window pass).
RAGGED = {"window": 0}
# Triangles with boxes of at most 2 x 2 pixel centres through the window pass.
WINDOW2 = {"window": 2}


def intrinsics(size):
  """f = (S - 1) / 2 / tan(fov / 2) and c = (S - 1) / 2."""
  return (size - 1) / 2 / math.tan(math.radians(FOV) / 2), (size - 1) / 2


def euler(rx, ry, rz):
  """Rz(rz) Ry(ry) Rx(rx), right-handed."""
  cx, sx = math.cos(rx), math.sin(rx)
  cy, sy = math.cos(ry), math.sin(ry)
  cz, sz = math.cos(rz), math.sin(rz)
  mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return mz @ my @ mx


def smooth_depth(rng, batch, size, waves=4):
  """Random sums of plane waves squashed into (0.9, 1.1)."""
  v, u = np.mgrid[0:size, 0:size] / (size - 1)
  field = np.zeros((batch, size, size))
  for b in range(batch):
    for _ in range(waves):
      k = rng.uniform(-6, 6, 2)
      field[b] += rng.normal() * np.sin(k[0] * u + k[1] * v +
                                        rng.uniform(0, 2 * np.pi))
  return 1.0 + 0.1 * np.tanh(field)


def lift(depth):
  """d K^-1 [u, v, 1] per pixel, `[..., S * S, 3]`."""
  size = depth.shape[-1]
  f, c = intrinsics(size)
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  points = np.stack([(u - c) / f * depth, (v - c) / f * depth, depth], -1)
  return points.reshape(depth.shape[:-2] + (size * size, 3))


def warp(points, view):
  """R (P - C) + C + t."""
  center = np.array([0.0, 0.0, ROT_CENTER])
  return (points - center) @ euler(*view[:3]).T + center + view[3:]


def random_meshes(rng, batch, size, max_degrees=60.0, max_shift=0.1):
  """Lifted smooth depth maps seen from random views.

  Warped with `transforms.warp_points` (checked against explicit matrices in
  test_camera_transforms.py) and returned as float64 copies of its float32
  output, so the brute force and the rasteriser see the same vertices.
  """
  depth = smooth_depth(rng, batch, size)
  views = np.concatenate(
      [np.radians(rng.uniform(-max_degrees, max_degrees, (batch, 3))),
       rng.uniform(-max_shift, max_shift, (batch, 3))], -1)
  warped = transforms.warp_points(tf.constant(lift(depth), tf.float32),
                                  tf.constant(views, tf.float32), ROT_CENTER)
  return warped.numpy().astype(np.float64)


def numpy_grid_faces(height, width):
  """(tl, bl, tr) for every quad, then (tr, bl, br), vertex i * W + j."""
  index = np.arange(height * width).reshape(height, width)
  tl, tr = index[:-1, :-1], index[:-1, 1:]
  bl, br = index[1:, :-1], index[1:, 1:]
  return np.concatenate([np.stack([tl, bl, tr], -1).reshape(-1, 3),
                         np.stack([tr, bl, br], -1).reshape(-1, 3)])


def signed_areas(uv, faces):
  p0, p1, p2 = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
  return ((p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) -
          (p2[:, 0] - p0[:, 0]) * (p1[:, 1] - p0[:, 1]))


def silhouette_edges(uv, faces):
  """Mesh boundary edges and folds (neighbours of opposite screen winding)."""
  area = signed_areas(uv, faces)
  owners = {}
  for t, tri in enumerate(faces):
    for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
      owners.setdefault((min(a, b), max(a, b)), []).append(t)
  return np.array([edge for edge, ts in owners.items()
                   if len(ts) == 1 or
                   np.sign(area[ts[0]]) != np.sign(area[ts[1]])])


def brute_force(points, faces, size, tolerance=1e-5, height=None,
                focal=None, principal_point=None):
  """Every pixel centre against every triangle in float64.

  Projects with K (pixel centres at integers), accepts a pixel when all
  normalised barycentrics are >= -tolerance, interpolates depth as
  1 / sum(b_i / z_i) and keeps the nearest.

  `size` is the raster width; `height` (default `size`), `focal` and
  `principal_point` (default: the square camera of DESIGN section 2) allow a
  non-square raster.

  Returns:
    depth: `[B, H, W]`, inf where nothing covers the pixel.
    winner: `[B, S, S]` nearest triangle, -1 where nothing covers.
    inner: `[B, S, S]` smallest barycentric of the winner at the pixel.
    gap: `[B, S, S]` depth of the nearest covering triangle that shares no
      vertex with the winner, minus the winner's depth (another surface).
    edge_distance: `[B, S, S]` pixel distance to the nearest silhouette edge.
  """
  width = size
  height = height or size
  if focal is None:
    f, c = intrinsics(size)
    focal, principal_point = (f, f), (c, c)
  focal, principal_point = np.array(focal), np.array(principal_point)
  faces = np.asarray(faces)
  batch = points.shape[0]
  py, px = np.mgrid[0:height, 0:width].reshape(2, -1).astype(np.float64)
  num_pixels = height * width
  outputs = {k: np.full((batch, num_pixels), np.inf)
             for k in ("depth", "inner", "gap", "edge_distance")}
  winner = np.full((batch, num_pixels), -1)
  for b in range(batch):
    p = points[b].astype(np.float64)
    uv = focal * p[:, :2] / p[:, 2:] + principal_point
    u, v = uv[faces, 0][..., None], uv[faces, 1][..., None]  # [T, 3, 1]
    area = signed_areas(uv, faces)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
      bary = np.stack([((u[:, j] - px) * (v[:, k] - py) -
                        (u[:, k] - px) * (v[:, j] - py)) / area
                       for j, k in ((1, 2), (2, 0), (0, 1))])  # [3, T, P]
      lowest = bary.min(0)
      inside = (lowest >= -tolerance) & (np.abs(area) > 1e-12)
      inv_z = np.sum(bary / p[faces, 2].T[..., None], 0)
      depth = np.where(inside, 1.0 / inv_z, np.inf)  # [T, P]
    best = np.argmin(depth, 0)
    hit = np.isfinite(depth[best, np.arange(num_pixels)])
    outputs["depth"][b] = depth[best, np.arange(num_pixels)]
    outputs["inner"][b] = lowest[best, np.arange(num_pixels)]
    winner[b] = np.where(hit, best, -1)
    for q in np.flatnonzero(hit):
      other = ~np.isin(faces, faces[best[q]]).any(-1)
      if other.any():
        outputs["gap"][b, q] = depth[other, q].min() - depth[best[q], q]
    edges = silhouette_edges(uv, faces)
    start, end = uv[edges[:, 0]][..., None], uv[edges[:, 1]][..., None]
    pixel = np.stack([px, py])[None]
    along = end - start
    t = np.clip(np.sum((pixel - start) * along, 1, keepdims=True) /
                np.sum(along * along, 1, keepdims=True), 0.0, 1.0)
    outputs["edge_distance"][b] = np.linalg.norm(
        pixel - (start + t * along), axis=1).min(0)
  shape = (batch, height, width)
  return (outputs["depth"].reshape(shape), winner.reshape(shape),
          outputs["inner"].reshape(shape), outputs["gap"].reshape(shape),
          outputs["edge_distance"].reshape(shape))


def render(points, size, **kwargs):
  f, c = intrinsics(size)
  depth, covered = rasterizer.rasterize_depth(
      tf.constant(points, tf.float32), rasterizer.grid_faces(size, size),
      (f, f), (c, c), size, size, background_depth=BACKGROUND, **kwargs)
  return depth.numpy(), covered.numpy()


def screen_coordinates(points, size):
  """(u, v, z) of each vertex, float32, projected in NumPy."""
  f, c = intrinsics(size)
  uv = f * points[..., :2] / points[..., 2:] + c
  return np.concatenate([uv, points[..., 2:]], -1).astype(np.float32)


@pytest.fixture
def path_spy(monkeypatch):
  """Records the passes that ran: (pass, window, candidates in it)."""
  calls = []
  window_pass = rasterizer._window_pass
  ragged_pass = rasterizer._ragged_pass

  def window_spy(keys, coef, x0, y0, size, *args):
    calls.append(("window", args[1],
                  int(tf.reduce_sum(tf.cast(size <= args[1], tf.int32)))
                  * args[1]**2))
    return window_pass(keys, coef, x0, y0, size, *args)

  def ragged_spy(keys, coef, x0, y0, span_x, span_y, size, *args):
    calls.append(("ragged", args[1], int(tf.reduce_sum(
        tf.where(size > args[1], span_x * span_y, 0)))))
    return ragged_pass(keys, coef, x0, y0, span_x, span_y, size, *args)

  monkeypatch.setattr(rasterizer, "_window_pass", window_spy)
  monkeypatch.setattr(rasterizer, "_ragged_pass", ragged_spy)
  return calls


@pytest.mark.parametrize("size,seed,kwargs,passes", [
    (8, 0, WINDOW2, [("window", 2), ("ragged", 2)]),
    (12, 1, WINDOW2, [("window", 2), ("ragged", 2)]),
    (16, 2, WINDOW2, [("window", 2), ("ragged", 2)]),
    # The default: every triangle through the ragged pass.
    (8, 8, {}, [("ragged", 0)]),
    # Ragged only: steps of B H W / 2 = 216 candidates split the boxes.
    (12, 3, RAGGED, [("ragged", 0)]),
    # One step larger than all candidates.
    (16, 4, {"window": 0, "candidate_chunk": 100_000}, [("ragged", 0)]),
    (16, 5, {"window": 1}, [("window", 1), ("ragged", 1)]),
    (16, 6, {"window": 4}, [("window", 4), ("ragged", 4)]),
    # A window of the whole image: everything through the window pass.
    (16, 7, {"window": 16}, [("window", 16), ("ragged", 16)]),
])
def test_depth_and_coverage_match_brute_force(size, seed, kwargs, passes,
                                              path_spy):
  """Same coverage and nearest depth (1e-5) as a float64 brute force."""
  rng = np.random.default_rng(seed)
  points = random_meshes(rng, 3, size)
  depth, covered = render(points, size, **kwargs)
  expected, _, _, gap, edge_distance = brute_force(
      points, numpy_grid_faces(size, size), size)
  # The passes under test really ran, on some candidates each.
  assert [call[:2] for call in path_spy] == passes
  assert all(call[2] > 0 for call in path_spy if call[1] < size)
  hit = np.isfinite(expected)
  # Ambiguous: two surfaces within 1e-4 in depth, or a pixel centre within
  # 1e-4 px of a silhouette edge, where float32 rounding may decide.
  ambiguous = (gap < 1e-4) | (edge_distance < 1e-4)
  print(f"S={size} seed={seed}: {ambiguous.sum()} ambiguous of "
        f"{ambiguous.size} pixels excluded")
  assert ambiguous.mean() < 0.01
  clear = ~ambiguous
  assert 0.1 < hit[clear].mean() < 0.95  # neither empty nor trivially full
  assert np.isfinite(gap[clear]).any()  # some pixels see an occluded layer
  np.testing.assert_array_equal(covered[clear], hit[clear])
  np.testing.assert_allclose(depth[clear & hit], expected[clear & hit],
                             atol=1e-5)
  np.testing.assert_array_equal(depth[~covered], BACKGROUND)


@pytest.mark.parametrize("size,seed,kwargs", [
    (12, 20, RAGGED), (16, 21, WINDOW2)])
def test_depth_without_gradient_is_the_differentiable_depth(size, seed,
                                                            kwargs):
  """differentiable=False: the float64 brute force's depth and coverage,
  the differentiable path's to float32 rounding, and no gradient."""
  rng = np.random.default_rng(seed)
  points = random_meshes(rng, 3, size)
  depth, covered = render(points, size, differentiable=False, **kwargs)
  expected, _, _, gap, edge_distance = brute_force(
      points, numpy_grid_faces(size, size), size)
  clear = (gap >= 1e-4) & (edge_distance >= 1e-4)
  assert clear.mean() > 0.99
  hit = np.isfinite(expected)
  assert 0.1 < hit[clear].mean() < 0.95
  np.testing.assert_array_equal(covered[clear], hit[clear])
  np.testing.assert_allclose(depth[clear & hit], expected[clear & hit],
                             atol=1e-5)
  np.testing.assert_array_equal(depth[~covered], BACKGROUND)
  depth_tfg, covered_tfg = render(points, size, **kwargs)
  np.testing.assert_array_equal(covered, covered_tfg)
  np.testing.assert_allclose(depth, depth_tfg, rtol=1e-5)
  f, c = intrinsics(size)
  vertices = tf.constant(points, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(vertices)
    depth = rasterizer.rasterize_depth(
        vertices, rasterizer.grid_faces(size, size), (f, f), (c, c), size,
        size, BACKGROUND, differentiable=False, **kwargs)[0]
  assert tape.gradient(depth, vertices) is None


@pytest.mark.parametrize("size,seed,kwargs", [
    (12, 10, WINDOW2),
    (12, 11, RAGGED),
])
def test_visible_triangle_ids_match_brute_force_winner(size, seed, kwargs):
  """Away from edges and close layers, ids equal the brute-force winner."""
  rng = np.random.default_rng(seed)
  points = random_meshes(rng, 3, size)
  ids, covered = rasterizer.visible_triangles(
      screen_coordinates(points, size), rasterizer.grid_faces(size, size),
      size, size, **kwargs)
  ids, covered = ids.numpy(), covered.numpy()
  _, winner, inner, gap, _ = brute_force(points, numpy_grid_faces(size, size),
                                         size)
  clear = (winner >= 0) & (inner > 1e-4) & (gap > 1e-4)
  assert clear.sum() > 50
  np.testing.assert_array_equal(ids[clear], winner[clear])
  np.testing.assert_array_equal(ids[~covered], 0)


def identity_meshes(rng, batch, size):
  """Per-pixel random depth at the identity view: vertices on pixels."""
  return lift(rng.uniform(0.9, 1.1, (batch, size, size)))


@pytest.mark.parametrize("size,kwargs", [
    (8, WINDOW2), (16, WINDOW2), (16, RAGGED),
])
def test_identity_view_has_no_cracks_and_exact_depth(size, kwargs):
  """Identity view: every pixel is covered and shows its own vertex depth.

  Every pixel centre is a mesh vertex, inside or on the projected outline
  (the brute force with a 1e-9 inside tolerance agrees), so all are covered.
  """
  rng = np.random.default_rng(size)
  points = identity_meshes(rng, 3, size)
  depth, covered = render(points, size, **kwargs)
  reference = brute_force(points, numpy_grid_faces(size, size), size,
                          tolerance=1e-9)[0]
  assert np.isfinite(reference).all()
  assert covered.all()
  np.testing.assert_allclose(depth, points[..., 2].reshape(depth.shape),
                             atol=1e-5)


@pytest.mark.parametrize("degrees", [1e-3, 0.5, 3.0])
def test_small_rotations_leave_no_cracks(degrees):
  """Every pixel inside the projected outline (brute force) is covered."""
  size = 16
  rng = np.random.default_rng(int(degrees * 1000))
  depth = 1.0 + 0.03 * np.tanh(rng.normal(size=(4, size, size)))
  views = np.concatenate([np.radians(rng.choice([-degrees, degrees], (4, 3))),
                          np.zeros((4, 3))], -1)
  points = np.stack([warp(lift(depth[b]), views[b]) for b in range(4)])
  covered = render(points, size)[1]
  expected, _, _, _, edge_distance = brute_force(
      points, numpy_grid_faces(size, size), size, tolerance=1e-9)
  inside = np.isfinite(expected) & (edge_distance > 1e-4)
  assert inside.mean() > 0.6
  assert covered[inside].all()


def test_same_input_gives_identical_ids():
  """Twice the same input (edges through pixel centres, many ties): same ids."""
  size = 12
  faces = rasterizer.grid_faces(size, size)
  rng = np.random.default_rng(20)
  for points in (identity_meshes(rng, 2, size), random_meshes(rng, 2, size)):
    screen = tf.constant(screen_coordinates(points, size))
    first, _ = rasterizer.visible_triangles(screen, faces, size, size)
    second, _ = rasterizer.visible_triangles(screen, faces, size, size)
    np.testing.assert_array_equal(first.numpy(), second.numpy())


@pytest.mark.parametrize("kwargs", [
    WINDOW2, RAGGED,
])
def test_coincident_triangles_go_to_the_smallest_id(kwargs):
  """Identical triangles at equal depth: the smallest index wins."""
  tri = np.array([[-2.0, -2.0, 1.0], [9.0, -2.0, 1.0], [-2.0, 9.0, 1.0]])
  copies = 5
  screen = tf.constant(np.tile(tri, (copies, 1))[None], tf.float32)
  rng = np.random.default_rng(21)
  for _ in range(4):
    order = rng.permutation(copies)
    faces = np.stack([3 * k + np.arange(3) for k in order]).astype(np.int32)
    # A far triangle first so the winner is not trivially index 0.
    far = np.array([[0, 1, 2]], np.int32) + 3 * copies
    far_screen = tf.concat([screen, tf.constant([tri + [0, 0, 1.0]],
                                                tf.float32)], 1)
    ids, covered = rasterizer.visible_triangles(
        far_screen, np.concatenate([far, faces]), 8, 8, **kwargs)
    ids, covered = ids.numpy()[0], covered.numpy()[0]
    v, u = np.mgrid[0:8, 0:8]
    inside = u + v <= 7  # the hypotenuse is x + y = 7
    np.testing.assert_array_equal(covered, inside)
    np.testing.assert_array_equal(ids[inside], 1)


@pytest.mark.parametrize("kwargs", [
    WINDOW2, RAGGED,
])
def test_nearer_triangle_wins_whatever_its_index(kwargs):
  """Overlapping triangles at depths 1 and 2: the nearer wins, any order."""
  tri = np.array([[-2.0, -2.0, 0.0], [9.0, -2.0, 0.0], [-2.0, 9.0, 0.0]])
  near, far = tri + [0, 0, 1.0], tri + [0, 0, 2.0]
  for near_first in (True, False):
    pair = (near, far) if near_first else (far, near)
    screen = tf.constant(np.concatenate(pair)[None], tf.float32)
    ids, _ = rasterizer.visible_triangles(screen, [[0, 1, 2], [3, 4, 5]], 6, 6,
                                          **kwargs)
    assert (ids.numpy()[0, :3, :3] == (0 if near_first else 1)).all()


@pytest.mark.parametrize("kwargs", [{}, RAGGED])
def test_behind_camera_and_degenerate_triangles_draw_nothing(kwargs):
  """Triangles with a vertex at z <= 0 or zero screen area cover no pixel.

  There is no near-plane clipping: a triangle that straddles the camera
  plane is dropped. Without that, its interpolated 1/z (b0 + b1 - b2 for
  the third triangle) is positive over most of the raster and would win.
  """
  behind = [[-2.0, -2.0, -1.0], [9.0, -2.0, -1.0], [-2.0, 9.0, -1.0]]
  flat = [[0.0, 0.0, 1.0], [4.0, 4.0, 1.0], [2.0, 2.0, 1.0]]
  straddling = [[-2.0, -2.0, 1.0], [9.0, -2.0, 1.0], [-2.0, 9.0, -1.0]]
  screen = tf.constant([behind + flat + straddling], tf.float32)
  _, covered = rasterizer.visible_triangles(
      screen, [[0, 1, 2], [3, 4, 5], [6, 7, 8]], 6, 6, **kwargs)
  assert not covered.numpy().any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kwargs", [{}, WINDOW2, {"grid": (8, 8)}])
def test_non_finite_vertices_draw_nothing_and_leave_the_rest(bad, kwargs):
  """Triangles touching a NaN or infinite vertex cover no pixel; the others
  render as they do without it (it is not their vertex)."""
  size = 8
  points = identity_meshes(np.random.default_rng(3), 1, size)
  screen = screen_coordinates(points, size)
  faces = rasterizer.grid_faces(size, size)
  ids, covered = (t.numpy() for t in rasterizer.visible_triangles(
      tf.constant(screen), faces, size, size, **kwargs))
  vertex = 3 * size + 4  # an inner vertex, in six triangles
  for coordinate in range(3):
    broken = screen.copy()
    broken[0, vertex, coordinate] = bad
    bad_ids, bad_covered = (t.numpy() for t in rasterizer.visible_triangles(
        tf.constant(broken), faces, size, size, **kwargs))
    touching = (faces.numpy()[bad_ids] == vertex).any(-1) & bad_covered
    assert not touching.any()
    # Elsewhere the same triangle wins as without the bad vertex.
    same = ~(faces.numpy()[ids] == vertex).any(-1)
    np.testing.assert_array_equal(bad_ids[same], ids[same])
    np.testing.assert_array_equal(bad_covered[same], covered[same])


@pytest.mark.parametrize("kwargs", [
    WINDOW2, RAGGED,
])
def test_xla_equals_eager(kwargs):
  """visible_triangles compiled with XLA returns the eager ids and coverage."""
  size = 12
  screen = tf.constant(screen_coordinates(
      random_meshes(np.random.default_rng(30), 2, size), size))
  faces = rasterizer.grid_faces(size, size)

  def fn(s):
    return rasterizer.visible_triangles(s, faces, size, size, **kwargs)

  eager = fn(screen)
  compiled = tf.function(fn, jit_compile=True)(screen)
  assert eager[1].numpy().any()
  for a, b in zip(eager, compiled):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_all_paths_agree_on_ids():
  """Window sizes 2, 1, 6 and ragged only give the same triangle ids."""
  size = 12
  rng = np.random.default_rng(31)
  faces = rasterizer.grid_faces(size, size)
  for points in (identity_meshes(rng, 2, size), random_meshes(rng, 2, size)):
    screen = tf.constant(screen_coordinates(points, size))
    results = [rasterizer.visible_triangles(screen, faces, size, size,
                                            **kwargs)[0].numpy()
               for kwargs in (WINDOW2, {"window": 1}, {"window": 6}, RAGGED)]
    for other in results[1:]:
      np.testing.assert_array_equal(results[0], other)


@pytest.mark.parametrize("kwargs", [{}, RAGGED])
def test_non_square_raster_matches_brute_force(kwargs):
  """H != W with an off-centre camera: coverage and depth as the brute force.

  Square images cannot tell rows from columns; a 10 x 15 raster does.
  """
  height, width = 10, 15
  focal, principal_point = (50.0, 55.0), (6.5, 4.0)
  rng = np.random.default_rng(40)
  points = random_meshes(rng, 2, 12, max_degrees=30.0)
  faces = rasterizer.grid_faces(12, 12)
  depth, covered = rasterizer.rasterize_depth(
      tf.constant(points, tf.float32), faces, focal, principal_point,
      height, width, background_depth=BACKGROUND, **kwargs)
  depth, covered = depth.numpy(), covered.numpy()
  assert depth.shape == covered.shape == (2, height, width)
  expected, _, _, gap, edge_distance = brute_force(
      points, numpy_grid_faces(12, 12), width, height=height, focal=focal,
      principal_point=principal_point)
  hit = np.isfinite(expected)
  clear = (gap >= 1e-4) & (edge_distance >= 1e-4)
  assert clear.mean() > 0.97
  assert 0.2 < hit[clear].mean() < 0.9  # the mesh covers part of the raster
  # Not symmetric under a transpose: rows and columns really differ.
  assert (hit[:, :, :height] != np.swapaxes(hit[:, :height, :height], 1,
                                            2)).any()
  np.testing.assert_array_equal(covered[clear], hit[clear])
  np.testing.assert_allclose(depth[clear & hit], expected[clear & hit],
                             atol=1e-5)


def test_tall_triangle_tolerance_band_same_on_all_paths():
  """Pixels within the 1e-5 barycentric band are covered on every path.

  The bottom edge lies 1.5e-3 px below pixel row 2 and the apex 298 px
  away, so row 2 has normalised barycentric -1.5e-3 / 298 = -5e-6 >= -1e-5:
  covered by the definition in `visible_triangles` (and the brute force).
  """
  screen = np.array([[[0.0, 2.0015, 1.0], [7.0, 2.0015, 1.0],
                      [3.5, 300.0, 1.0]]])
  faces = np.array([[0, 1, 2]])
  points = np.concatenate([screen[..., :2] - 3.5, np.ones((1, 3, 1))], -1)
  expected = np.isfinite(brute_force(points, faces, 8, focal=(1.0, 1.0),
                                     principal_point=(3.5, 3.5))[0][0])
  assert expected[2].any()  # the band reaches row 2
  for kwargs in (RAGGED, {}):
    _, covered = rasterizer.visible_triangles(
        tf.constant(screen, tf.float32), faces, 8, 8, **kwargs)
    np.testing.assert_array_equal(covered.numpy()[0], expected)


def test_pixel_barycentrics_equal_tfg_values_and_gradients():
  """The closed form against TFG's `differentiable_barycentrics` (the
  3x3 system per triangle): the same weights and the same gradient of a
  random weighting of them w.r.t. the clip-space vertices, on turned
  meshes, the visibility pass's own triangles and a degenerate one."""
  from tf_unsup3d.rendering import camera
  size, batch = 12, 3
  rng = np.random.default_rng(30)
  points = random_meshes(rng, batch, size).astype(np.float32)
  faces = rasterizer.grid_faces(size, size)
  f, c = intrinsics(size)
  screen = tf.concat([camera.project(tf.constant(points), (f, f), (c, c)),
                      tf.constant(points[..., 2:])], -1)
  triangle_id, covered = rasterizer.visible_triangles(screen, faces, size,
                                                      size)
  pixel_faces = tf.gather(faces, triangle_id).numpy()
  pixel_faces[0, 0, 0] = [5, 5, 7]  # degenerate: two equal corners
  pixel_faces = tf.constant(pixel_faces)
  clip = camera.clip_space(tf.constant(points), (f, f), (c, c), size, size)
  probe = tf.constant(rng.normal(size=(batch, size, size, 3)), tf.float32)

  def ours(clip):
    return rasterizer.pixel_barycentrics(clip, pixel_faces)[0]

  def tfg(clip):
    return rasterizer.tfg_pixel_barycentrics(clip, pixel_faces)[0]

  results = []
  for fn in (ours, tfg):
    with tf.GradientTape() as tape:
      tape.watch(clip)
      weights = fn(clip)
      value = tf.reduce_sum(weights * probe)
    results.append((weights.numpy(), tape.gradient(value, clip).numpy()))
  (w_ours, g_ours), (w_tfg, g_tfg) = results
  inside = covered.numpy()
  assert inside.mean() > 0.3
  np.testing.assert_allclose(w_ours.sum(-1)[inside], 1.0, atol=1e-5)
  np.testing.assert_allclose(w_ours, w_tfg, atol=1e-5)
  np.testing.assert_array_equal(w_ours[0, 0, 0], 0.0)
  scale = np.abs(g_tfg).max()
  assert scale > 0
  np.testing.assert_allclose(g_ours, g_tfg, atol=1e-5 * scale)


@pytest.mark.parametrize("rows,cols", [(5, 7), (6, 3)])
def test_grid_corners_are_the_gathered_corners(rows, cols):
  """Sliced grid corners equal `grid_faces`' gathered ones, non-square too."""
  rng = np.random.default_rng(rows * cols)
  screen = tf.constant(rng.normal(size=(2, rows * cols, 3)), tf.float32)
  faces = rasterizer.grid_faces(rows, cols)
  gathered = rasterizer._corners(screen, faces)
  sliced = rasterizer._corners(screen, faces, grid=(rows, cols))
  for values, expected in zip(sliced, gathered):
    for value, want in zip(values, expected):
      np.testing.assert_array_equal(value.numpy(), want.numpy())
  with pytest.raises(ValueError, match="needs"):
    rasterizer._corners(screen, faces, grid=(cols, rows + 1))


def test_grid_faces_topology():
  """(tl, bl, tr) then (tr, bl, br) per quad: two half-quads each."""
  faces = rasterizer.grid_faces(3, 4).numpy()
  np.testing.assert_array_equal(faces, numpy_grid_faces(3, 4))
  assert faces.shape == (12, 3)
  # Both triangles of a quad have unit-half screen area on a unit grid.
  v, u = np.mgrid[0:3, 0:4].reshape(2, -1).astype(np.float64)
  area = signed_areas(np.stack([u, v], -1), faces)
  np.testing.assert_allclose(np.abs(area), 1.0)


def test_packed_keys_order_by_inverse_depth_then_smaller_id():
  """One max over the packed keys = largest 1/z, ties to the smaller id."""
  rng = np.random.default_rng(50)
  score = np.concatenate([rng.choice([1e-30, 0.5, 0.75, 1.0, 3e38], 200),
                          rng.uniform(-1, 1, 200)]).astype(np.float32)
  ids = rng.integers(0, 2**31 - 1, 400).astype(np.int32)
  ids[:20] = [0, 2**31 - 2] * 10
  keys = rasterizer._pack_keys(tf.constant(score), tf.constant(ids))
  covered, unpacked = (t.numpy() for t in rasterizer._unpack_keys(keys))
  keys = keys.numpy()
  np.testing.assert_array_equal(covered, score > 0)
  np.testing.assert_array_equal(unpacked[covered], ids[covered])
  order = np.lexsort((ids, -score.astype(np.float64)))  # by -1/z, then id
  positive = order[score[order] > 0]
  assert (np.diff(keys[positive]) <= 0).all()
  assert (keys[score <= 0] == -1).all()


def box_reference(screen, faces, size, tolerance=1e-5, max_pairs=1 << 22):
  """Float64 z-buffer over each triangle's bounding box grown by 1 px.

  Independent of the rasteriser's boxes: a pixel the tolerant inside test
  accepts lies within tolerance * altitude < 1 px of the triangle at these
  sizes. Processes (triangle, pixel) pairs `max_pairs` at a time.

  Args:
    screen: `[V, 3]` (u, v, z) of one mesh (the rasteriser's float32 input).

  Returns:
    winner: `[S, S]` nearest covering triangle (smallest id among equal
      depths), -1 where none.
    margin: `[S, S]` the largest, over triangles, signed pixel distance
      min_i (b_i + tolerance) * altitude_i: > 0 inside a tolerant triangle,
      its size how far the pixel is from changing coverage.
    winner_margin: `[S, S]` the same for the winner alone.
    gap: `[S, S]` depth of the nearest other covering triangle minus the
      winner's (inf where none).
  """
  screen = screen.astype(np.float64)
  faces = np.asarray(faces)
  uv, z = screen[faces, :2], screen[faces, 2]  # [T, 3, 2], [T, 3]
  area = ((uv[:, 1, 0] - uv[:, 0, 0]) * (uv[:, 2, 1] - uv[:, 0, 1]) -
          (uv[:, 2, 0] - uv[:, 0, 0]) * (uv[:, 1, 1] - uv[:, 0, 1]))
  valid = (np.abs(area) > 1e-12) & (z.min(1) > 0)
  low = np.clip(np.floor(uv.min(1)) - 1, 0, size)
  high = np.clip(np.ceil(uv.max(1)) + 1, -1, size - 1)
  span = np.where(valid[:, None], np.maximum(high - low + 1, 0), 0)
  span = span.astype(np.int64)
  low = low.astype(np.int64)
  count = span[:, 0] * span[:, 1]
  edges = [(1, 2), (2, 0), (0, 1)]
  length = np.stack([np.linalg.norm(uv[:, j] - uv[:, k], axis=-1)
                     for j, k in edges], -1)
  with np.errstate(divide="ignore", invalid="ignore"):
    altitude = 2 * np.abs(area)[:, None] / length  # [T, 3]

  def pairs():
    """(triangle, pixel, inside, depth, margin) of every box pixel."""
    ends = np.cumsum(count)
    first = 0
    while first < len(faces):
      last = int(np.searchsorted(ends, ends[first] - count[first] + max_pairs,
                                 side="right"))
      last = max(last, first + 1)
      tri = np.repeat(np.arange(first, last), count[first:last])
      local = np.arange(len(tri)) - np.repeat(
          ends[first:last] - count[first:last] - (ends[first] - count[first]),
          count[first:last])
      px = low[tri, 0] + local % np.maximum(span[tri, 0], 1)
      py = low[tri, 1] + local // np.maximum(span[tri, 0], 1)
      u, v = uv[tri, :, 0], uv[tri, :, 1]
      bary = np.stack([((u[:, j] - px) * (v[:, k] - py) -
                        (u[:, k] - px) * (v[:, j] - py)) / area[tri]
                       for j, k in edges], -1)
      margin = ((bary + tolerance) * altitude[tri]).min(-1)
      inside = bary.min(-1) >= -tolerance
      depth = 1.0 / (bary / z[tri]).sum(-1)
      yield tri, py * size + px, inside, depth, margin
      first = last

  num_pixels = size * size
  best = np.full(num_pixels, np.inf)
  margin = np.full(num_pixels, -np.inf)
  for tri, pixel, inside, depth, m in pairs():
    np.maximum.at(margin, pixel, m)
    np.minimum.at(best, pixel[inside], depth[inside])
  winner = np.full(num_pixels, len(faces))
  for tri, pixel, inside, depth, _ in pairs():
    win = inside & (depth == best[pixel])
    np.minimum.at(winner, pixel[win], tri[win])
  winner = np.where(np.isfinite(best), winner, -1)
  second = np.full(num_pixels, np.inf)
  winner_margin = np.full(num_pixels, -np.inf)
  for tri, pixel, inside, depth, m in pairs():
    own = tri == winner[pixel]
    winner_margin[pixel[own]] = m[own]
    other = inside & ~own
    np.minimum.at(second, pixel[other], depth[other])
  shape = (size, size)
  return (winner.reshape(shape), margin.reshape(shape),
          winner_margin.reshape(shape), (second - best).reshape(shape))


def large_mesh(size, depth_kind, view_degrees, seed):
  """Screen coordinates of one S x S grid mesh under a view.

  "smooth" is `smooth_depth`; "noise" per-pixel uniform noise of
  half-width 0.1 * 64 / S: the 64-px noise depth with the same stretch of
  triangles in pixels at every S.
  """
  rng = np.random.default_rng(seed)
  if depth_kind == "smooth":
    depth = smooth_depth(rng, 1, size)[0]
  else:
    half_width = 0.1 * 64 / size
    depth = rng.uniform(1 - half_width, 1 + half_width, (size, size))
  view = np.concatenate([np.radians(view_degrees), [0.0, 0.0, 0.0]])
  return screen_coordinates(warp(lift(depth), view)[None], size)


LARGE_VIEWS = {"identity": (0, 0, 0), "yaw 30": (0, 30, 0),
               "yaw 60": (0, 60, 0), "roll 45": (0, 0, 45),
               "roll 44.9, yaw 5": (0, 5, 44.9)}


@pytest.mark.parametrize("size", [
    128, pytest.param(256, marks=pytest.mark.slow)])
@pytest.mark.parametrize("depth_kind", ["smooth", "noise"])
@pytest.mark.parametrize("view", list(LARGE_VIEWS))
def test_large_rasters_match_box_reference(size, depth_kind, view):
  """128 and 256 px: coverage and ids as a float64 z-buffer, on all passes.

  Pixels whose coverage or winner float32 rounding may decide are left out:
  within 1e-4 px of a tolerant triangle's outline, or with another covering
  triangle within 1e-5 in depth (float32 resolves 1/z near 1 to about
  1e-7). At the identity view every pixel is a vertex, on the outline of
  its triangles: there every pixel must be covered by a triangle of its own
  vertex.
  """
  screen = large_mesh(size, depth_kind, LARGE_VIEWS[view],
                      seed=size + len(view))
  faces = rasterizer.grid_faces(size, size)
  results = [tuple(t.numpy()[0] for t in rasterizer.visible_triangles(
      tf.constant(screen), faces, size, size, **kwargs))
             for kwargs in (WINDOW2, RAGGED, dict(RAGGED, grid=(size, size)))]
  for other in results[1:]:  # the passes split the work; same answers
    for a, b in zip(results[0], other):
      np.testing.assert_array_equal(a, b)
  ids, covered = results[0]
  np.testing.assert_array_equal(ids[~covered], 0)
  faces = numpy_grid_faces(size, size)
  if view == "identity":
    assert covered.all()
    vertex = np.arange(size * size).reshape(size, size)
    assert (faces[ids] == vertex[..., None]).any(-1).all()
    return
  winner, margin, winner_margin, gap = box_reference(screen[0], faces, size)
  clear_coverage = np.abs(margin) > 1e-4
  print(f"S={size} {depth_kind} {view}: {(~clear_coverage).sum()} of "
        f"{margin.size} pixels with ambiguous coverage")
  assert clear_coverage.mean() > 0.99
  hit = winner >= 0
  assert 0.2 < hit.mean() < 1.0
  np.testing.assert_array_equal(covered[clear_coverage], hit[clear_coverage])
  clear_id = hit & (winner_margin > 1e-4) & (gap > 1e-5)
  assert clear_id.sum() > 0.9 * hit.sum()
  np.testing.assert_array_equal(ids[clear_id], winner[clear_id])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
