"""Camera model and view transforms against explicit NumPy maths (DESIGN 2)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import transforms


def rot_x(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def explicit_rotation(view):
  """R = Rz(rz) Ry(ry) Rx(rx) from the usual right-handed matrices."""
  return rot_z(view[2]) @ rot_y(view[1]) @ rot_x(view[0])


def random_views(rng, batch, max_angle=math.pi, max_shift=0.1):
  return np.concatenate([rng.uniform(-max_angle, max_angle, (batch, 3)),
                         rng.uniform(-max_shift, max_shift, (batch, 3))], -1)


def pinhole_points(depth, f, c):
  """Lifts `[..., H, W]` depth with K in NumPy: d ((u - cx) / fx, ...)."""
  height, width = depth.shape[-2:]
  v, u = np.mgrid[0:height, 0:width].astype(np.float64)
  return np.stack([(u - c[0]) / f[0] * depth, (v - c[1]) / f[1] * depth,
                   depth], -1)


def test_rotation_matrix_is_rz_ry_rx():
  """TFG's from_euler equals the explicit product Rz(rz) Ry(ry) Rx(rx)."""
  rng = np.random.default_rng(0)
  views = random_views(rng, 8)
  got = transforms.rotation_matrix(tf.constant(views, tf.float32)).numpy()
  for b in range(len(views)):
    np.testing.assert_allclose(got[b], explicit_rotation(views[b]),
                               atol=2e-6)


@pytest.mark.parametrize("axis,source,target", [
    (0, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]),  # Rx(90): y -> z
    (1, [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),  # Ry(90): z -> x
    (2, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),  # Rz(90): x -> y
])
def test_quarter_turns_are_right_handed(axis, source, target):
  """+90 degrees about x, y, z maps y->z, z->x, x->y (right-handed)."""
  view = np.zeros((1, 6), np.float32)
  view[0, axis] = math.pi / 2
  rotation = transforms.rotation_matrix(tf.constant(view)).numpy()[0]
  np.testing.assert_allclose(rotation @ np.array(source), target, atol=1e-6)


def test_rotation_matrix_is_orthonormal():
  """R^T R = I and det R = 1 for random Euler angles."""
  rng = np.random.default_rng(1)
  got = transforms.rotation_matrix(
      tf.constant(random_views(rng, 6), tf.float32)).numpy()
  np.testing.assert_allclose(np.einsum("bji,bjk->bik", got, got),
                             np.broadcast_to(np.eye(3), got.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=1e-5)


@pytest.mark.parametrize("rot_center_depth", [1.0, 0.7])
def test_warp_points_is_rotation_about_the_centre_plus_translation(
    rot_center_depth):
  """warp_points equals R (P - C) + C + t computed in NumPy."""
  rng = np.random.default_rng(2)
  views = random_views(rng, 3, max_angle=1.0)
  points = rng.uniform(-0.3, 1.3, (3, 7, 3))
  got = transforms.warp_points(tf.constant(points, tf.float32),
                               tf.constant(views, tf.float32),
                               rot_center_depth).numpy()
  center = np.array([0.0, 0.0, rot_center_depth])
  for b in range(3):
    expected = ((points[b] - center) @ explicit_rotation(views[b]).T +
                center + views[b, 3:])
    np.testing.assert_allclose(got[b], expected, atol=1e-5)


def test_warp_moves_the_rotation_centre_only_by_t():
  """The centre C is fixed by the rotation: warp(C) = C + t."""
  rng = np.random.default_rng(3)
  views = random_views(rng, 4)
  center = np.broadcast_to([0.0, 0.0, 1.05], (4, 1, 3))
  got = transforms.warp_points(tf.constant(center, tf.float32),
                               tf.constant(views, tf.float32), 1.05).numpy()
  np.testing.assert_allclose(got[:, 0], center[:, 0] + views[:, 3:],
                             atol=1e-6)


def test_inverse_warp_undoes_warp_both_ways():
  """inverse_warp_points(warp_points(P)) == P and warp(inverse_warp(P)) == P."""
  rng = np.random.default_rng(4)
  views = tf.constant(random_views(rng, 3), tf.float32)
  points = tf.constant(rng.uniform(-0.5, 1.5, (3, 11, 3)), tf.float32)
  there = transforms.warp_points(points, views, 1.0)
  assert np.abs(there.numpy() - points.numpy()).max() > 0.05  # not a no-op
  np.testing.assert_allclose(
      transforms.inverse_warp_points(there, views, 1.0).numpy(),
      points.numpy(), atol=1e-5)
  back = transforms.inverse_warp_points(points, views, 1.0)
  np.testing.assert_allclose(transforms.warp_points(back, views, 1.0).numpy(),
                             points.numpy(), atol=1e-5)


def test_composed_view_warps_like_the_two_in_turn():
  rng = np.random.default_rng(11)
  random_views = lambda: tf.constant(np.concatenate(
      [rng.uniform(-1.2, 1.2, (6, 3)), rng.uniform(-0.2, 0.2, (6, 3))], 1),
      tf.float32)
  inner, outer = random_views(), random_views()
  points = tf.constant(rng.uniform(-1, 2, (6, 9, 3)), tf.float32)
  composed = transforms.compose_views(outer, inner)
  np.testing.assert_allclose(
      transforms.warp_points(transforms.warp_points(points, inner, 1.0),
                             outer, 1.0).numpy(),
      transforms.warp_points(points, composed, 1.0).numpy(), atol=1e-5)
  # Two turns about the vertical axis add up.
  yaw = lambda a: tf.constant([[0.0, a, 0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(
      transforms.compose_views(yaw(0.3), yaw(-0.5)).numpy(), yaw(-0.2).numpy(),
      atol=1e-6)


def test_bad_view_shape_is_rejected():
  """A view must be [B, 6]; [B, 3] or [6] is a ValueError."""
  with pytest.raises(ValueError, match=r"\[B, 6\]"):
    transforms.rotation_matrix(tf.zeros([2, 3]))
  with pytest.raises(ValueError, match=r"\[B, 6\]"):
    transforms.warp_points(tf.zeros([1, 4, 3]), tf.zeros([6]), 1.0)


@pytest.mark.parametrize("size,fov", [(9, 10.0), (16, 10.0), (12, 40.0)])
def test_focal_length_follows_the_fov(size, fov):
  """f = (S - 1) / 2 / tan(fov / 2) pixels."""
  expected = (size - 1) / 2 / math.tan(math.radians(fov) / 2)
  assert camera.focal_length(size, fov) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("fov", [0.0, -5.0, 180.0])
def test_focal_length_rejects_impossible_fov(fov):
  """A field of view outside (0, 180) degrees is a ValueError."""
  with pytest.raises(ValueError, match="fov"):
    camera.focal_length(64, fov)


def test_pixel_grid_holds_column_then_row():
  """pixel_grid[i, j] = (u, v) = (j, i)."""
  grid = camera.pixel_grid(3, 5).numpy()
  assert grid.shape == (3, 5, 2)
  v, u = np.mgrid[0:3, 0:5]
  np.testing.assert_array_equal(grid, np.stack([u, v], -1))


def test_lift_matches_k_inverse():
  """lift(d) = d K^-1 [u, v, 1]^T; non-square, off-centre camera."""
  rng = np.random.default_rng(5)
  f, c = (11.0, 9.5), (3.2, 2.7)
  depth = rng.uniform(0.5, 2.0, (2, 6, 8))
  got = camera.lift(tf.constant(depth, tf.float32), f, c).numpy()
  np.testing.assert_allclose(got, pinhole_points(depth, f, c), rtol=1e-6,
                             atol=1e-6)


def test_lift_then_project_returns_the_pixel_grid():
  """project(lift(d)) = (u, v) at every pixel for random depth."""
  rng = np.random.default_rng(6)
  size = 12
  f = camera.focal_length(size, 10.0)
  c = (size - 1) / 2
  depth = rng.uniform(0.9, 1.1, (2, size, size))
  points = camera.lift(tf.constant(depth, tf.float32), (f, f), (c, c))
  pixels = camera.project(points, (f, f), (c, c)).numpy()
  v, u = np.mgrid[0:size, 0:size]
  np.testing.assert_allclose(
      pixels, np.broadcast_to(np.stack([u, v], -1), pixels.shape), atol=2e-5)


def test_lift_of_unit_depth_at_centre_and_corners():
  """Depth 1: (0, 0, 1) at the centre, (+-tan(fov/2), ...) at corners."""
  size, fov = 9, 10.0
  f = camera.focal_length(size, fov)
  c = (size - 1) / 2
  points = camera.lift(tf.ones([1, size, size]), (f, f), (c, c)).numpy()[0]
  np.testing.assert_allclose(points[4, 4], [0.0, 0.0, 1.0], atol=1e-7)
  half = math.tan(math.radians(fov) / 2)  # the corner ray sits at fov / 2
  np.testing.assert_allclose(points[0, 0], [-half, -half, 1.0], rtol=1e-6)
  np.testing.assert_allclose(points[-1, -1], [half, half, 1.0], rtol=1e-6)
  np.testing.assert_allclose(points[0, -1], [half, -half, 1.0], rtol=1e-6)


def test_lift_rejects_bad_depth_rank():
  """Depth must be [B, H, W]."""
  with pytest.raises(ValueError, match=r"\[B, H, W\]"):
    camera.lift(tf.ones([4, 4]), (1.0, 1.0), (1.5, 1.5))


def test_project_is_the_pinhole_model():
  """project(P) = (fx x / z + cx, fy y / z + cy) for random points."""
  rng = np.random.default_rng(7)
  points = np.concatenate([rng.uniform(-0.3, 0.3, (2, 9, 2)),
                           rng.uniform(0.5, 2.0, (2, 9, 1))], -1)
  f, c = (30.0, 25.0), (7.5, 5.5)
  got = camera.project(tf.constant(points, tf.float32), f, c).numpy()
  expected = np.stack([f[0] * points[..., 0] / points[..., 2] + c[0],
                       f[1] * points[..., 1] / points[..., 2] + c[1]], -1)
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_clip_space_puts_integer_pixels_on_tfg_pixel_centres():
  """x/w, y/w at pixel (j, i) are TFG's ((2j+1)/W - 1, (2i+1)/H - 1)."""
  height, width = 6, 9
  f, c = (13.0, 11.0), ((width - 1) / 2, (height - 1) / 2)
  depth = np.random.default_rng(8).uniform(0.5, 2.0, (height, width))
  points = pinhole_points(depth, f, c).reshape(1, -1, 3)
  clip = camera.clip_space(tf.constant(points, tf.float32), f, c, height,
                           width).numpy()[0]
  v, u = np.mgrid[0:height, 0:width]
  np.testing.assert_allclose(clip[:, 0] / clip[:, 3],
                             ((2 * u + 1) / width - 1).ravel(), atol=1e-6)
  np.testing.assert_allclose(clip[:, 1] / clip[:, 3],
                             ((2 * v + 1) / height - 1).ravel(), atol=1e-6)
  np.testing.assert_allclose(clip[:, 2], depth.ravel(), rtol=1e-6)
  np.testing.assert_allclose(clip[:, 3], depth.ravel(), rtol=1e-6)


def test_clip_space_is_affine_in_the_projected_pixel():
  """Off the grid too: x/w = (2u + 1)/W - 1 with u = fx x / z + cx."""
  rng = np.random.default_rng(9)
  height, width = 10, 7
  f, c = (9.0, 12.0), (2.5, 6.0)
  points = np.concatenate([rng.uniform(-0.4, 0.4, (1, 20, 2)),
                           rng.uniform(0.6, 1.6, (1, 20, 1))], -1)
  clip = camera.clip_space(tf.constant(points, tf.float32), f, c, height,
                           width).numpy()[0]
  p = points[0]
  u = f[0] * p[:, 0] / p[:, 2] + c[0]
  v = f[1] * p[:, 1] / p[:, 2] + c[1]
  np.testing.assert_allclose(clip[:, 0] / clip[:, 3], (2 * u + 1) / width - 1,
                             atol=1e-5)
  np.testing.assert_allclose(clip[:, 1] / clip[:, 3], (2 * v + 1) / height - 1,
                             atol=1e-5)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
