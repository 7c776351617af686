"""Normals and Lambertian shading against NumPy and analytic values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import shading

FOV = 10.0


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def pixel_rays(size):
  """K^-1 [u, v, 1] per pixel for an S x S image, `[S, S, 3]`."""
  f = (size - 1) / 2 / math.tan(math.radians(FOV) / 2)
  c = (size - 1) / 2
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  return np.stack([(u - c) / f, (v - c) / f, np.ones_like(u)], -1)


def random_lights(rng, batch):
  dxy = rng.uniform(-1.5, 1.5, (batch, 2))
  return dxy, unit(np.concatenate([dxy, np.ones((batch, 1))], -1))


def test_diffuse_is_the_clamped_cosine_for_normals_away_from_the_camera():
  """max(0, n . l) for unit normals with n_z > 0 viewed along the pixel rays."""
  rng = np.random.default_rng(0)
  size = 8
  normal = rng.normal(size=(3, size, size, 3))
  normal[..., 2] = np.abs(normal[..., 2]) + 0.3
  normal = unit(normal)
  ray = unit(pixel_rays(size))
  to_camera = np.broadcast_to(-ray, normal.shape)
  # Precondition of DESIGN's setting: the surface faces the viewer.
  assert (np.sum(normal * ray, -1) > 0).all()
  _, light = random_lights(rng, 3)
  got = shading.diffuse_shading(tf.constant(normal, tf.float32),
                                tf.constant(light, tf.float32),
                                tf.constant(to_camera, tf.float32)).numpy()
  expected = np.maximum(0.0, np.einsum("bhwc,bc->bhw", normal, light))
  assert got.shape == (3, size, size, 1)
  assert (expected == 0).any() and (expected > 0.5).any()  # both regimes
  np.testing.assert_allclose(got[..., 0], expected, atol=1e-6)


def test_surface_seen_from_behind_is_not_lit():
  """n . view_dir > 0 (seen from behind) gives 0 even where n . l > 0.

  TFG's `lambertian.brdf` is physical: its normal faces the viewer and its
  incoming light travels from the light to the surface; it returns
  albedo / pi only where -incoming . normal >= 0 and outgoing . normal >= 0.
  With DESIGN's normal n (away from the camera), TFG's normal is -n, the
  incoming light is l, the outgoing direction is view_dir (to the camera):
  the gate is n . l >= 0 and n . view_dir <= 0. Here n . view_dir > 0.
  """
  rng = np.random.default_rng(1)
  to_camera = np.broadcast_to([0.0, 0.0, -1.0], (2, 4, 4, 3))
  normal = rng.normal(size=(2, 4, 4, 3))
  normal[..., 2] = -np.abs(normal[..., 2]) - 0.2  # n . view_dir > 0
  normal = unit(normal)
  light = unit(np.array([[0.0, 0.0, -1.0], [0.3, -0.2, -1.0]]))
  cosine = np.einsum("bhwc,bc->bhw", normal, light)
  assert (cosine > 0).all()  # max(0, n . l) alone would light every pixel
  got = shading.diffuse_shading(tf.constant(normal, tf.float32),
                                tf.constant(light, tf.float32),
                                tf.constant(to_camera, tf.float32)).numpy()
  np.testing.assert_array_equal(got, 0.0)


def test_light_direction_is_normalised_dx_dy_1():
  """light_direction(dx, dy) = (dx, dy, 1) / |(dx, dy, 1)|."""
  dxy, expected = random_lights(np.random.default_rng(2), 5)
  got = shading.light_direction(tf.constant(dxy, tf.float32)).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-6)
  got = shading.light_direction(tf.constant([[3.0, 4.0]])).numpy()
  np.testing.assert_allclose(got, [np.array([3.0, 4.0, 1.0]) / math.sqrt(26)],
                             atol=1e-7)


@pytest.mark.parametrize("size", [8, 16])
def test_lifted_fronto_parallel_plane_has_normal_0_0_1(size):
  """Constant depth lifted with K: (0, 0, 1) everywhere, border included."""
  ray = pixel_rays(size)
  points = np.stack([ray * 1.03, ray * 0.95])
  got = shading.normals_from_points(tf.constant(points, tf.float32)).numpy()
  expected = np.broadcast_to([0.0, 0.0, 1.0], got.shape)
  np.testing.assert_allclose(unit(got), expected, atol=1e-6)
  # |tu x tv| is tiny, so the + 1e-7 in the normalisation shows slightly.
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-3)


def test_normals_are_normalised_central_difference_cross_products():
  """normalise((P[v,u+1]-P[v,u-1]) x (P[v+1,u]-P[v-1,u])); border (0,0,1)."""
  rng = np.random.default_rng(3)
  points = rng.normal(size=(2, 6, 7, 3))
  got = shading.normals_from_points(tf.constant(points, tf.float32)).numpy()
  expected = np.zeros_like(points)
  expected[..., 2] = 1.0
  for i in range(1, 5):
    for j in range(1, 6):
      tu = points[:, i, j + 1] - points[:, i, j - 1]
      tv = points[:, i + 1, j] - points[:, i - 1, j]
      expected[:, i, j] = unit(np.cross(tu, tv))
  np.testing.assert_allclose(got, expected, atol=2e-5)


def test_tilted_plane_normal_points_away_from_the_camera():
  """A plane n . P = 1 sampled along the rays gives n (n_z > 0) inside."""
  size = 12
  ray = pixel_rays(size)
  normal = unit(np.array([0.4, -0.3, 1.0]))
  points = ray / (ray @ normal)[..., None]
  got = shading.normals_from_points(tf.constant(points[None],
                                                tf.float32)).numpy()[0]
  inner = got[1:-1, 1:-1]
  np.testing.assert_allclose(unit(inner), np.broadcast_to(normal, inner.shape),
                             atol=1e-4)


def test_lifted_depth_normals_always_face_the_camera():
  """For any positive depth map the central-difference normal has n . P > 0.

  With rays r = K^-1 [u, v, 1] one pixel apart, tu = (a - b) r + (a + b) dx
  and tv = (c - e) r + (c + e) dy (a, b, c, e the neighbours' depths), so
  (tu x tv) . r = (a + b) (c + e) det(dx, dy, r) > 0: never seen from behind.
  Hence with the renderer's view directions the TFG gate never fires and the
  shading is exactly max(0, n . l), even on rough depth.
  """
  size = 10
  rng = np.random.default_rng(4)
  depth = rng.uniform(0.3, 3.0, (2, size, size))  # rough, not smooth
  points = pixel_rays(size) * depth[..., None]
  got = shading.normals_from_points(tf.constant(points, tf.float32)).numpy()
  inner = (slice(None), slice(1, -1), slice(1, -1))
  assert (np.einsum("bhwc,bhwc->bhw", got[inner], points[inner]) > 0).all()
  assert (got[inner][..., 2] < 0.5).any()  # steep normals are included
  to_camera = -unit(points)
  light = unit(np.array([[0.8, -0.5, 0.3], [-0.2, 0.9, 0.4]]))
  shaded = shading.diffuse_shading(tf.constant(got, tf.float32),
                                   tf.constant(light, tf.float32),
                                   tf.constant(to_camera, tf.float32)).numpy()
  expected = np.maximum(0.0, np.einsum("bhwc,bc->bhw", got, light))
  assert (expected > 0.3).any()
  np.testing.assert_allclose(shaded[..., 0], expected, atol=1e-6)


def test_diffuse_shading_with_unknown_batch_size():
  """A tf.function traced with batch None gives max(0, n . l) for B = 3,
  gated to 0 where the surface is seen from behind (n_z < 0)."""
  size = 4
  normal = np.array(np.broadcast_to(unit(np.array([0.2, -0.1, 1.0])),
                                    (3, size, size, 3)))
  normal[1, 0, 0] = unit(np.array([0.6, 0.0, -0.2]))  # back-facing, lit
  light = unit(np.array([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8], [0.0, 0.6, 0.8]]))
  to_camera = np.broadcast_to([0.0, 0.0, -1.0], normal.shape)
  fn = tf.function(shading.diffuse_shading, input_signature=[
      tf.TensorSpec([None, size, size, 3]), tf.TensorSpec([None, 3]),
      tf.TensorSpec([None, size, size, 3])])
  got = fn(*(tf.constant(x, tf.float32) for x in (normal, light, to_camera)))
  expected = np.maximum(0.0, np.einsum("bhwc,bc->bhw", normal, light))
  assert expected[1, 0, 0] > 0.2
  expected[1, 0, 0] = 0.0
  np.testing.assert_allclose(got.numpy()[..., 0], expected, atol=1e-6)


def test_normals_shape_is_checked():
  """Points must be [B, H, W, 3]."""
  with pytest.raises(ValueError, match="points"):
    shading.normals_from_points(tf.zeros([4, 4, 3]))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
