"""Camera and view transforms against explicit matrices (DESIGN section 2)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import transforms


def rx(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ry(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rz(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_views(batch, rng):
  return np.concatenate([rng.uniform(-1, 1, (batch, 3)),
                         rng.uniform(-0.1, 0.1, (batch, 3))], -1)


def test_rotation_is_rz_ry_rx():
  rng = np.random.default_rng(0)
  view = random_views(4, rng)
  got = transforms.rotation_matrix(tf.constant(view, tf.float32)).numpy()
  for b in range(4):
    expected = rz(view[b, 2]) @ ry(view[b, 1]) @ rx(view[b, 0])
    np.testing.assert_allclose(got[b], expected, atol=1e-6)


def test_warp_rotates_about_the_centre_then_translates():
  rng = np.random.default_rng(1)
  view = random_views(2, rng)
  points = rng.uniform(-0.2, 1.2, (2, 5, 3))
  got = transforms.warp_points(tf.constant(points, tf.float32),
                               tf.constant(view, tf.float32), 1.05).numpy()
  center = np.array([0, 0, 1.05])
  for b in range(2):
    r = rz(view[b, 2]) @ ry(view[b, 1]) @ rx(view[b, 0])
    expected = (points[b] - center) @ r.T + center + view[b, 3:]
    np.testing.assert_allclose(got[b], expected, atol=1e-5)
  back = transforms.inverse_warp_points(tf.constant(got),
                                        tf.constant(view, tf.float32), 1.05)
  np.testing.assert_allclose(back.numpy(), points, atol=1e-5)


def test_bad_view_shape_is_rejected():
  with pytest.raises(ValueError, match=r"\[B, 6\]"):
    transforms.rotation_matrix(tf.zeros([2, 3]))


def test_lift_and_project_follow_k():
  size, fov = 9, 10.0
  f = camera.focal_length(size, fov)
  assert f == pytest.approx(4 / math.tan(math.radians(5)))
  depth = np.random.default_rng(2).uniform(0.9, 1.1, (1, size, size))
  points = camera.lift(tf.constant(depth, tf.float32), (f, f), (4.0, 4.0))
  points = points.numpy()
  np.testing.assert_allclose(points[0, 4, 4], [0, 0, depth[0, 4, 4]],
                             atol=1e-6)
  # Corner pixel (u, v) = (0, 0): x = (0 - c) / f * d.
  np.testing.assert_allclose(points[0, 0, 0, :2], -4 / f * depth[0, 0, 0],
                             rtol=1e-5)
  pixels = camera.project(points, (f, f), (4.0, 4.0)).numpy()
  v, u = np.mgrid[0:size, 0:size]
  np.testing.assert_allclose(pixels[0], np.stack([u, v], -1), atol=1e-4)


def test_clip_space_lands_on_tfg_pixel_centres():
  """x/w and y/w equal TFG's (2 j + 1) / W - 1 at each projected pixel."""
  height, width = 6, 8
  f, c = (7.0, 7.0), ((width - 1) / 2, (height - 1) / 2)
  v, u = np.mgrid[0:height, 0:width].astype(np.float32)
  depth = np.random.default_rng(3).uniform(0.5, 2, (height, width))
  points = np.stack([(u - c[0]) / f[0] * depth, (v - c[1]) / f[1] * depth,
                     depth], -1).reshape(1, -1, 3)
  clip = camera.clip_space(tf.constant(points, tf.float32), f, c, height,
                           width).numpy()[0]
  np.testing.assert_allclose(clip[:, 0] / clip[:, 3],
                             ((2 * u + 1) / width - 1).ravel(), atol=1e-5)
  np.testing.assert_allclose(clip[:, 1] / clip[:, 3],
                             ((2 * v + 1) / height - 1).ravel(), atol=1e-5)


def test_fov_must_be_sensible():
  with pytest.raises(ValueError, match="fov"):
    camera.focal_length(64, 0.0)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
