"""Normals and Lambertian shading against analytic values."""

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import shading


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_diffuse_is_clamped_cosine_for_surfaces_facing_the_camera():
  """DESIGN convention: n and l point away from the camera; shading max(0, n.l)."""
  rng = np.random.default_rng(0)
  normal = rng.normal(size=(3, 4, 5, 3))
  normal[..., 2] = np.abs(normal[..., 2]) + 0.1  # away from the camera
  normal = unit(normal)
  light = unit(np.concatenate([rng.uniform(-2, 2, (3, 2)), np.ones((3, 1))], -1))
  to_camera = np.broadcast_to([0.0, 0.0, -1.0], normal.shape)
  got = shading.diffuse_shading(tf.constant(normal, tf.float32),
                                tf.constant(light, tf.float32),
                                tf.constant(to_camera, tf.float32)).numpy()
  expected = np.maximum(0, np.einsum("bhwc,bc->bhw", normal, light))
  np.testing.assert_allclose(got[..., 0], expected, atol=1e-6)


def test_surface_seen_from_behind_is_not_lit():
  """A normal toward the camera (n_z < 0 here) is a back face: TFG gates it."""
  normal = tf.constant([[[[0.0, 0.6, -0.8]]]])
  light = tf.constant([[0.0, 0.6, -0.8]])  # n . l = 1
  to_camera = tf.constant([[[[0.0, 0.0, -1.0]]]])
  assert float(shading.diffuse_shading(normal, light, to_camera)[0, 0, 0, 0]) == 0


def test_light_direction_is_normalised_dx_dy_1():
  got = shading.light_direction(tf.constant([[3.0, 4.0], [0.0, 0.0]])).numpy()
  np.testing.assert_allclose(got, [np.array([3, 4, 1]) / np.sqrt(26), [0, 0, 1]],
                             atol=1e-6)


def test_normals_of_a_plane_and_the_border():
  """Points of a tilted plane (any grid on it) give its unit normal; border (0,0,1)."""
  v, u = np.mgrid[0:6, 0:7].astype(np.float64)
  x, y = 0.1 * u, 0.07 * v
  z = 1.0 + 0.3 * x - 0.2 * y  # normal ~ (-0.3, 0.2, 1)
  points = tf.constant(np.stack([x, y, z], -1)[None], tf.float32)
  got = shading.normals_from_points(points).numpy()[0]
  expected = unit(np.array([-0.3, 0.2, 1.0]))
  np.testing.assert_allclose(got[1:-1, 1:-1], np.broadcast_to(expected, (4, 5, 3)),
                             atol=1e-5)
  border = np.concatenate([got[0], got[-1], got[:, 0], got[:, -1]])
  np.testing.assert_allclose(border, np.broadcast_to([0, 0, 1], border.shape))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
