"""The visibility pass and depth rasteriser against a brute-force NumPy z-buffer."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import rasterizer
from tf_unsup3d.rendering import transforms

FOV = 10.0


def intrinsics(size):
  f = (size - 1) / 2 / math.tan(math.radians(FOV) / 2)
  c = (size - 1) / 2
  return f, c


def random_mesh(size, batch, rng, max_angle=60.0, roughness=0.08):
  """Lifted smooth random depth maps in [0.9, 1.1], warped by random views."""
  low = rng.normal(size=(batch, 5, 5, 1))
  depth = tf.image.resize(low, [size, size], method="bicubic")[..., 0]
  depth = np.clip(1.0 + roughness * np.tanh(depth.numpy()), 0.9, 1.1)
  f, c = intrinsics(size)
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  points = np.stack([(u - c) / f * depth, (v - c) / f * depth, depth], -1)
  points = points.reshape(batch, -1, 3).astype(np.float32)
  angles = np.radians(rng.uniform(-max_angle, max_angle, (batch, 3)))
  shift = rng.uniform(-0.1, 0.1, (batch, 3))
  view = np.concatenate([angles, shift], -1).astype(np.float32)
  warped = transforms.warp_points(tf.constant(points), tf.constant(view), 1.0)
  return warped.numpy()


def brute_force(points, faces, size, tolerance=1e-5):
  """Every pixel centre against every triangle, float64.

  Returns depth (inf for background), the gap to the second-nearest covering
  surface and the smallest barycentric of the winning triangle (how close the
  pixel is to the winner's edge).
  """
  f, c = intrinsics(size)
  p = points.astype(np.float64)
  u = f * p[..., 0] / p[..., 2] + c
  v = f * p[..., 1] / p[..., 2] + c
  z = p[..., 2]
  batch = p.shape[0]
  depth = np.full((batch, size * size), np.inf)
  second = np.full((batch, size * size), np.inf)
  margin = np.full((batch, size * size), np.inf)
  py, px = np.mgrid[0:size, 0:size].reshape(2, -1).astype(np.float64)
  for b in range(batch):
    for tri in faces:
      (u0, u1, u2), (v0, v1, v2), (z0, z1, z2) = u[b, tri], v[b, tri], z[b, tri]
      area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
      if abs(area) < 1e-12:
        continue
      b0 = ((u1 - px) * (v2 - py) - (u2 - px) * (v1 - py)) / area
      b1 = ((u2 - px) * (v0 - py) - (u0 - px) * (v2 - py)) / area
      b2 = 1.0 - b0 - b1
      lowest = np.minimum(np.minimum(b0, b1), b2)
      inside = lowest >= -tolerance
      d = 1.0 / (b0 / z0 + b1 / z1 + b2 / z2)
      nearer = inside & (d < depth[b])
      second[b] = np.where(nearer, depth[b],
                           np.where(inside, np.minimum(second[b], d),
                                    second[b]))
      margin[b] = np.where(nearer, np.abs(lowest), margin[b])
      depth[b] = np.where(nearer, d, depth[b])
  shape = (batch, size, size)
  return depth.reshape(shape), second.reshape(shape), margin.reshape(shape)


def render(points, size, **kwargs):
  f, c = intrinsics(size)
  faces = rasterizer.grid_faces(size, size)
  depth, covered = rasterizer.rasterize_depth(
      points, faces, (f, f), (c, c), size, size, background_depth=10.0,
      **kwargs)
  return depth.numpy(), covered.numpy(), faces.numpy()


@pytest.mark.parametrize("size,seed,kwargs", [
    (8, 0, {}),
    (12, 1, {"triangle_chunk": 50}),  # does not divide 242 triangles
    (16, 2, {"triangle_chunk": 1000}),  # larger than the triangle count
    (16, 3, {"windows": ((6, None), (16, 1), (None, 1))}),  # forces fallback
    (16, 4, {"windows": ((2, None), (4, 64), (None, 64))}),
    (16, 5, {"windows": ((3, None), (None, 450))}),  # two tiers, whole image
])
def test_nearest_depth_matches_brute_force(size, seed, kwargs):
  """Same coverage and nearest depth at every unambiguous pixel (1e-5)."""
  rng = np.random.default_rng(seed)
  points = random_mesh(size, 3, rng, roughness=0.15)
  depth, covered, faces = render(points, size, **kwargs)
  expected, second, margin = brute_force(points, faces, size)
  # Ambiguous: two surfaces within 1e-4, or a pixel on the winner's edge.
  with np.errstate(invalid="ignore"):  # inf - inf on background pixels
    ambiguous = (second - expected < 1e-4) | (margin < 1e-4)
  assert ambiguous.mean() < 0.02
  clear = ~ambiguous
  np.testing.assert_array_equal(covered[clear], np.isfinite(expected)[clear])
  hit = clear & np.isfinite(expected)
  assert hit.sum() > 0.15 * hit.size  # not vacuous: translations move it off
  np.testing.assert_allclose(depth[hit], expected[hit], atol=1e-5)
  np.testing.assert_allclose(depth[~covered], 10.0)


@pytest.mark.parametrize("max_angle", [0.0, 5.0])
def test_no_cracks_inside_the_outline(max_angle):
  """Every pixel the brute force covers is covered: shared edges leave no gaps."""
  size = 16
  rng = np.random.default_rng(5)
  points = random_mesh(size, 4, rng, max_angle=max_angle, roughness=0.02)
  if max_angle == 0.0:  # the identity view: vertices on pixel centres
    f, c = intrinsics(size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = rng.uniform(0.95, 1.05, (4, size, size)).astype(np.float32)
    points = np.stack([(u - c) / f * depth, (v - c) / f * depth, depth], -1)
    points = points.reshape(4, -1, 3)
  depth, covered, faces = render(points, size)
  expected, _, _ = brute_force(points, faces, size, tolerance=0.0)
  assert covered[np.isfinite(expected)].all()
  if max_angle == 0.0:
    assert covered.all()


def test_identical_input_gives_identical_ids_and_ties_go_to_smallest_id():
  """Two coincident triangles: the smaller index wins, every time."""
  # Vertices 0..2 and 3..5 are the same triangle; face 1 uses 3..5.
  tri = np.array([[-2.0, -2.0, 1.0], [9.0, -2.0, 1.0], [-2.0, 9.0, 1.0]])
  screen = tf.constant(np.concatenate([tri, tri])[None], tf.float32)
  for faces in ([[3, 4, 5], [0, 1, 2]], [[0, 1, 2], [3, 4, 5]]):
    ids, covered = rasterizer.visible_triangles(screen, faces, 8, 8)
    again, _ = rasterizer.visible_triangles(screen, faces, 8, 8)
    np.testing.assert_array_equal(ids.numpy(), again.numpy())
    assert covered.numpy()[0, 0, 0] and not covered.numpy()[0, 7, 7]
    assert set(np.unique(ids.numpy()[covered.numpy()])) == {0}


def test_nearer_triangle_wins_whatever_its_index():
  """Two overlapping triangles at different depths: the nearer one is drawn."""
  tri = np.array([[-2.0, -2.0, 0.0], [9.0, -2.0, 0.0], [-2.0, 9.0, 0.0]])
  near, far = tri + [0, 0, 1.0], tri + [0, 0, 2.0]
  for order in ((near, far), (far, near)):
    screen = tf.constant(np.concatenate(order)[None], tf.float32)
    ids, _ = rasterizer.visible_triangles(screen, [[0, 1, 2], [3, 4, 5]], 6, 6)
    expected = 0 if order[0] is near else 1
    assert (ids.numpy()[0, :3, :3] == expected).all()


def test_xla_equals_eager():
  size = 12
  points = random_mesh(size, 2, np.random.default_rng(6))
  f, c = intrinsics(size)
  screen = tf.concat([camera.project(points, (f, f), (c, c)),
                      points[..., 2:]], -1)
  faces = rasterizer.grid_faces(size, size)
  fn = lambda s: rasterizer.visible_triangles(s, faces, size, size)
  eager = fn(screen)
  compiled = tf.function(fn, jit_compile=True)(screen)
  for a, b in zip(eager, compiled):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_grid_faces_cover_each_quad_with_two_triangles():
  """Reference topology: (tl, bl, tr) and (tr, bl, br) per quad."""
  faces = rasterizer.grid_faces(3, 4).numpy()
  assert faces.shape == (2 * 2 * 3, 3)
  assert faces[0].tolist() == [0, 4, 1]
  assert faces[6].tolist() == [1, 4, 5]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
