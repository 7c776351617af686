"""Renderer: identity view, analytic scenes, normals, gradients, turntables."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import Renderer


def smooth_depth(batch, size, seed, amplitude=0.05):
  rng = np.random.default_rng(seed)
  low = rng.normal(size=(batch, 4, 4, 1))
  depth = tf.image.resize(low, [size, size], method="bicubic")[..., 0]
  return tf.constant(1.0 + amplitude * np.tanh(depth.numpy()), tf.float32)


def rays(renderer):
  """Unit-depth ray directions K^-1 [u, v, 1] per pixel, `[S, S, 3]`."""
  s = renderer.image_size
  f, c = renderer.focal[0], renderer.principal_point[0]
  v, u = np.mgrid[0:s, 0:s].astype(np.float64)
  return np.stack([(u - c) / f, (v - c) / f, np.ones_like(u)], -1)


def test_identity_view_reproduces_depth_grid_and_image():
  size = 16
  r = Renderer(image_size=size)
  depth = smooth_depth(2, size, 0)
  zeros = tf.zeros([2, 6])
  warped = r.warp_canon_depth(depth, zeros).numpy()
  inner = (slice(None), slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(warped[inner], depth.numpy()[inner], atol=1e-5)
  grid = r.inverse_warp_grid(warped, zeros).numpy()
  v, u = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
  np.testing.assert_allclose(grid[inner], np.broadcast_to(np.stack([u, v], -1), grid.shape)[inner],
                             atol=1e-4)
  image = tf.random.uniform([2, size, size, 3])
  rendered, _, mask = r.render_view(image, depth, zeros)
  np.testing.assert_allclose(rendered.numpy()[inner], image.numpy()[inner],
                             atol=1e-3)
  assert mask.numpy()[inner].all()


@pytest.mark.parametrize("angle", [-0.5, 0.3])
def test_rotated_plane_renders_the_ray_plane_intersection(angle):
  """Plane z = z0 rotated about y through C: depth = t where ray t.r meets it."""
  size, z0 = 16, 1.02
  r = Renderer(image_size=size, rot_center_depth=1.0)
  depth = tf.fill([1, size, size], z0)
  view = tf.constant([[0.0, angle, 0.0, 0.0, 0.0, 0.0]])
  got = r.warp_canon_depth(depth, view).numpy()[0]
  center = np.array([0.0, 0.0, 1.0])
  rot = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                  [-math.sin(angle), 0, math.cos(angle)]])
  normal = rot @ [0.0, 0.0, 1.0]
  anchor = rot @ (np.array([0, 0, z0]) - center) + center
  ray = rays(r)
  t = (anchor @ normal) / (ray @ normal)  # depth along z since ray_z = 1
  covered = got < r.far_depth
  assert covered.sum() > size * size / 3
  np.testing.assert_allclose(got[covered], t[covered], atol=1e-5)


def test_translation_moves_a_plane():
  """tz pushes a fronto-parallel plane back; tx shifts it by f tx / z pixels."""
  size = 16
  r = Renderer(image_size=size)
  depth = tf.fill([1, size, size], 1.0)
  got = r.warp_canon_depth(depth, tf.constant([[0, 0, 0, 0, 0, 0.05]],
                                              tf.float32)).numpy()[0]
  covered = got < r.far_depth
  np.testing.assert_allclose(got[covered], 1.05, atol=1e-5)
  assert covered[2:-2, 2:-2].all()
  got = r.warp_canon_depth(depth, tf.constant([[0, 0, 0, 0.05, 0, 0]],
                                              tf.float32)).numpy()[0]
  covered = got < r.far_depth
  shift = 0.05 * r.focal[0]  # 4.3 pixels at S = 16
  assert not covered[:, :int(shift)].any()
  assert covered[:, int(shift) + 1:].all()


def test_normals_of_a_tilted_plane_and_a_sphere():
  size = 24
  r = Renderer(image_size=size)
  ray = rays(r)
  # Plane n . P = d with n away from the camera.
  n = np.array([0.3, -0.2, 1.0])
  n /= np.linalg.norm(n)
  plane_depth = 1.0 / (ray @ n)
  got = r.normals_from_depth(tf.constant(plane_depth[None], tf.float32))
  got = got.numpy()[0]
  inner = got[1:-1, 1:-1]
  assert (np.linalg.norm(inner, axis=-1) > 0.99).all()
  np.testing.assert_allclose(inner / np.linalg.norm(inner, axis=-1,
                                                    keepdims=True),
                             np.broadcast_to(n, inner.shape), atol=1e-4)
  np.testing.assert_allclose(got[0], np.broadcast_to([0, 0, 1], got[0].shape))
  # Near side of a sphere: outward normal (P - centre) / rad faces the camera,
  # so DESIGN's normal (away from the camera) is its negative.
  centre, rad = np.array([0.0, 0.0, 1.2]), 0.15
  b = ray @ centre
  a = np.sum(ray * ray, -1)
  t = (b - np.sqrt(b * b - a * (centre @ centre - rad * rad))) / a
  points = ray * t[..., None]
  expected = -(points - centre) / rad
  got = r.normals_from_depth(tf.constant(points[None, ..., 2],
                                         tf.float32)).numpy()[0]
  got = got / np.linalg.norm(got, axis=-1, keepdims=True)
  np.testing.assert_allclose(got[4:-4, 4:-4], expected[4:-4, 4:-4], atol=1e-2)


def test_depth_gradient_matches_finite_differences():
  """On a tilted plane every triangle is coplanar, so rendered depth is smooth
  in the view and the vertices even where pixels cross triangle edges."""
  size = 12
  r = Renderer(image_size=size)
  n = np.array([0.2, -0.3, 1.0]) / np.linalg.norm([0.2, -0.3, 1.0])
  depth = tf.constant((1.0 / (rays(r) @ n))[None], tf.float32)
  view = tf.constant([[0.05, 0.2, -0.05, 0.01, 0.0, 0.0]])
  pixels = (slice(None), slice(4, 8), slice(4, 8))
  loss = lambda d, v: tf.reduce_sum(r.warp_canon_depth(d, v)[pixels])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([depth, view])
    value = loss(depth, view)
  grad_depth = tape.gradient(value, depth).numpy()
  grad_view = tape.gradient(value, view).numpy()
  direction = np.random.default_rng(2).normal(size=depth.shape) * 0.1
  eps = 1e-3
  numeric = (float(loss(depth + eps * direction, view)) -
             float(loss(depth - eps * direction, view))) / (2 * eps)
  assert np.sum(grad_depth * direction) == pytest.approx(numeric, rel=0.03)
  for k in range(6):
    step = np.zeros((1, 6), np.float32)
    step[0, k] = eps
    numeric = (float(loss(depth, view + step)) -
               float(loss(depth, view - step))) / (2 * eps)
    assert grad_view[0, k] == pytest.approx(numeric, rel=0.03, abs=0.02)


def test_render_yaw_turntable():
  size = 16
  r = Renderer(image_size=size)
  depth = smooth_depth(1, size, 3).numpy()
  depth = (depth + depth[:, :, ::-1]) / 2
  image = np.random.default_rng(4).uniform(0, 1, (1, size, size, 3))
  image = ((image + image[:, :, ::-1]) / 2).astype(np.float32)
  frames = r.render_yaw(image, depth, [-0.4, 0.0, 0.4]).numpy()
  assert frames.shape == (1, 3, size, size, 3)
  np.testing.assert_allclose(frames[0, 1, 2:-2, 2:-2], image[0, 2:-2, 2:-2],
                             atol=1e-3)
  # A mirror-symmetric object turned left is the mirror image of it turned right.
  # Up to the triangulation, whose diagonals do not mirror onto each other.
  difference = np.abs(frames[0, 0] - frames[0, 2, :, ::-1])
  assert difference.mean() < 2e-3 and difference.max() < 3e-2
  assert np.abs(frames[0, 0] - frames[0, 1]).max() > 0.05


def test_depth_shape_is_checked():
  with pytest.raises(ValueError, match=r"\[B, 16, 16\]"):
    Renderer(image_size=16).warp_canon_depth(tf.ones([1, 8, 8]), tf.zeros([1, 6]))
  with pytest.raises(ValueError, match="min_depth"):
    Renderer(min_depth=1.2, max_depth=1.1)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
