"""Renderer: identity view, analytic scenes, normals, gradients, turntables."""

import functools
import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import Renderer

ROT_CENTER = 1.0  # the default: (min_depth + max_depth) / 2


def euler(rx, ry, rz):
  """Rz(rz) Ry(ry) Rx(rx), right-handed."""
  cx, sx = math.cos(rx), math.sin(rx)
  cy, sy = math.cos(ry), math.sin(ry)
  cz, sz = math.cos(rz), math.sin(rz)
  mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return mz @ my @ mx


def intrinsics(size, fov=10.0):
  return (size - 1) / 2 / math.tan(math.radians(fov) / 2), (size - 1) / 2


def rays(size):
  """K^-1 [u, v, 1] per pixel, `[S, S, 3]` (z = 1: depth is the ray scale)."""
  f, c = intrinsics(size)
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  return np.stack([(u - c) / f, (v - c) / f, np.ones_like(u)], -1)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def smooth_depth(rng, batch, size, amplitude=0.05):
  """Smooth random depth around 1: a few random plane waves."""
  v, u = np.mgrid[0:size, 0:size] / (size - 1)
  field = np.zeros((batch, size, size))
  for b in range(batch):
    for _ in range(3):
      k = rng.uniform(-4, 4, 2)
      field[b] += rng.normal() * np.sin(k[0] * u + k[1] * v +
                                        rng.uniform(0, 2 * np.pi))
  return 1.0 + amplitude * np.tanh(field)


def identity_grid(size):
  v, u = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
  return np.stack([u, v], -1)


def plane_scene(size, z0, view):
  """Closed form of the canonical plane z = z0 seen from `view`.

  The plane's normal becomes R (0, 0, 1) and it passes through
  R ((0, 0, z0) - C) + C + t. Each pixel ray r (r_z = 1) meets it at depth
  (n . A) / (n . r); mapping that point back gives its canonical pixel.

  Returns:
    depth `[S, S]`, canonical pixel coordinates `[S, S, 2]`, inside (the
    point lies on the S x S mesh) and the distance in canonical pixels to
    the mesh's outline.
  """
  rotation = euler(*view[:3])
  center = np.array([0.0, 0.0, ROT_CENTER])
  normal = rotation @ [0.0, 0.0, 1.0]
  anchor = rotation @ (np.array([0.0, 0.0, z0]) - center) + center + view[3:]
  ray = rays(size)
  depth = (anchor @ normal) / (ray @ normal)
  points = ray * depth[..., None]
  canonical = (points - view[3:] - center) @ rotation + center
  np.testing.assert_allclose(canonical[..., 2], z0, atol=1e-9)
  f, c = intrinsics(size)
  pixel = f * canonical[..., :2] / z0 + c
  distance = np.minimum(pixel, size - 1 - pixel).min(-1)
  return depth, pixel, distance >= 0, np.abs(distance)


def test_identity_view_reproduces_the_canonical_depth():
  """View 0: warp_canon_depth(d) = d away from the 2-pixel border."""
  size = 16
  r = Renderer(image_size=size)
  depth = smooth_depth(np.random.default_rng(0), 2, size)
  got = r.warp_canon_depth(tf.constant(depth, tf.float32),
                           tf.zeros([2, 6])).numpy()
  np.testing.assert_allclose(got[:, 2:-2, 2:-2], depth[:, 2:-2, 2:-2],
                             atol=1e-5)


def test_identity_view_inverse_grid_is_the_identity_grid():
  """View 0: inverse_warp_grid = (u / (S - 1) * 2 - 1, v / (S - 1) * 2 - 1)."""
  size = 12
  r = Renderer(image_size=size)
  depth = smooth_depth(np.random.default_rng(1), 2, size)
  got = r.inverse_warp_grid(tf.constant(depth, tf.float32),
                            tf.zeros([2, 6])).numpy()
  np.testing.assert_allclose(
      got, np.broadcast_to(identity_grid(size), got.shape), atol=1e-5)


def test_identity_view_render_reproduces_the_image():
  """View 0: render_view returns the canonical image and a full mask inside."""
  size = 16
  r = Renderer(image_size=size)
  rng = np.random.default_rng(2)
  depth = tf.constant(smooth_depth(rng, 2, size), tf.float32)
  image = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  rendered, recon, mask = r.render_view(image, depth, tf.zeros([2, 6]))
  inner = (slice(None), slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(rendered.numpy()[inner], image[inner], atol=1e-4)
  np.testing.assert_allclose(recon.numpy()[inner], depth.numpy()[inner],
                             atol=1e-5)
  assert mask.numpy()[inner].all()


PLANE_VIEWS = [
    [0.0, 0.5, 0.0, 0.0, 0.0, 0.0],
    [0.0, -0.3, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.03, -0.02, 0.06],  # translation only
    [0.2, -0.35, 0.3, 0.02, -0.03, 0.05],
]


@pytest.mark.parametrize("view", PLANE_VIEWS)
def test_plane_renders_the_ray_plane_intersection(view):
  """Rotated/translated plane: depth is the closed-form ray-plane hit."""
  size, z0 = 16, 1.02
  view = np.array(view)
  r = Renderer(image_size=size)
  got = r.warp_canon_depth(tf.fill([1, size, size], z0),
                           tf.constant(view[None], tf.float32)).numpy()[0]
  depth, _, inside, distance = plane_scene(size, z0, view)
  clear = distance > 1e-3
  assert clear.mean() > 0.97
  assert 0.3 < inside.mean() < 1.0  # part of the image, not all of it
  covered = got < r.far_depth
  np.testing.assert_array_equal(covered[clear], inside[clear])
  np.testing.assert_allclose(got[covered], depth[covered], atol=1e-5)
  np.testing.assert_array_equal(got[~covered], np.float32(r.far_depth))


@pytest.mark.parametrize("view", PLANE_VIEWS[::3])
def test_render_view_samples_the_analytic_texture_location(view):
  """A linear texture renders its value at the closed-form source pixel."""
  size, z0 = 16, 1.02
  view = np.array(view)
  r = Renderer(image_size=size)
  _, pixel, inside, distance = plane_scene(size, z0, view)
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  image = np.stack([0.1 * u - 0.05 * v + 0.2, -0.03 * u + 0.08 * v], -1)
  rendered, _, mask = r.render_view(
      tf.constant(image[None], tf.float32), tf.fill([1, size, size], z0),
      tf.constant(view[None], tf.float32))
  rendered, mask = rendered.numpy()[0], mask.numpy()[0]
  clear = distance > 1e-3
  np.testing.assert_array_equal(mask[clear], inside[clear])
  expected = np.stack([0.1 * pixel[..., 0] - 0.05 * pixel[..., 1] + 0.2,
                       -0.03 * pixel[..., 0] + 0.08 * pixel[..., 1]], -1)
  covered = mask > 0
  np.testing.assert_allclose(rendered[covered], expected[covered], atol=1e-4)
  np.testing.assert_array_equal(rendered[~covered], 0.0)


def test_inverse_warp_grid_matches_numpy():
  """grid = K (R^T (d K^-1 [u, v, 1] - t - C) + C), normalised."""
  size = 12
  rng = np.random.default_rng(3)
  depth = smooth_depth(rng, 2, size)
  views = np.concatenate([rng.uniform(-0.5, 0.5, (2, 3)),
                          rng.uniform(-0.1, 0.1, (2, 3))], -1)
  got = Renderer(image_size=size).inverse_warp_grid(
      tf.constant(depth, tf.float32), tf.constant(views, tf.float32)).numpy()
  f, c = intrinsics(size)
  center = np.array([0.0, 0.0, ROT_CENTER])
  for b in range(2):
    points = rays(size) * depth[b, ..., None]
    canonical = (points - views[b, 3:] - center) @ euler(*views[b, :3]) + center
    pixel = f * canonical[..., :2] / canonical[..., 2:] + c
    np.testing.assert_allclose(got[b], pixel / (size - 1) * 2 - 1, atol=2e-5)


@pytest.mark.parametrize("normal", [
    [0.3, -0.2, 1.0], [-0.5, 0.1, 1.0], [0.0, 0.6, 1.0],
])
def test_normals_of_tilted_planes(normal):
  """Depth of the plane n . P = 1 gives n (z > 0) at interior pixels."""
  size = 16
  normal = unit(np.array(normal))
  depth = 1.0 / (rays(size) @ normal)
  got = Renderer(image_size=size).normals_from_depth(
      tf.constant(depth[None], tf.float32)).numpy()[0]
  inner = got[1:-1, 1:-1]
  assert (np.linalg.norm(inner, axis=-1) > 0.99).all()
  np.testing.assert_allclose(unit(inner), np.broadcast_to(normal, inner.shape),
                             atol=1e-4)


def test_normals_of_a_sphere():
  """Near side of a sphere: normal -(P - centre) / r, away from camera."""
  size = 24
  centre, radius = np.array([0.0, 0.0, 1.2]), 0.2
  ray = rays(size)
  # Nearest root of |t r - centre|^2 = radius^2.
  a, b = np.sum(ray * ray, -1), ray @ centre
  t = (b - np.sqrt(b * b - a * (centre @ centre - radius ** 2))) / a
  points = ray * t[..., None]
  expected = -(points - centre) / radius
  got = Renderer(image_size=size).normals_from_depth(
      tf.constant(points[None, ..., 2], tf.float32)).numpy()[0]
  inner = (slice(1, -1), slice(1, -1))
  assert (expected[inner][..., 2] > 0).all()
  assert np.abs(expected[inner][..., :2]).max() > 0.3  # really curved
  # Central differences over a curved surface: O(h^2) error, ~1e-3 here.
  np.testing.assert_allclose(unit(got[inner]), expected[inner], atol=5e-3)
  border = np.concatenate([got[0], got[-1], got[:, 0], got[:, -1]])
  np.testing.assert_array_equal(border, np.broadcast_to([0.0, 0.0, 1.0],
                                                        border.shape))


def test_view_directions_point_from_the_surface_to_the_camera():
  """view_directions = -P / |P| with P = d K^-1 [u, v, 1] (camera at 0)."""
  size = 8
  depth = smooth_depth(np.random.default_rng(8), 2, size)
  got = Renderer(image_size=size).view_directions(
      tf.constant(depth, tf.float32)).numpy()
  expected = -unit(rays(size) * depth[..., None])
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # Corner rays lean outwards by fov / 2 in x and y (fov = 10 degrees).
  half = math.tan(math.radians(5.0))
  np.testing.assert_allclose(got[0, 0, 0], -unit(np.array([-half, -half, 1])),
                             atol=1e-6)


def nearest_triangles(points, faces, size):
  """Float64 brute force: nearest triangle and its smallest barycentric."""
  f, c = intrinsics(size)
  uv = f * points[:, :2] / points[:, 2:] + c
  py, px = np.mgrid[0:size, 0:size].reshape(2, -1).astype(np.float64)
  u, v = uv[faces, 0][..., None], uv[faces, 1][..., None]
  area = ((u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) -
          (u[:, 2] - u[:, 0]) * (v[:, 1] - v[:, 0]))
  bary = np.stack([((u[:, j] - px) * (v[:, k] - py) -
                    (u[:, k] - px) * (v[:, j] - py)) / area
                   for j, k in ((1, 2), (2, 0), (0, 1))])
  lowest = bary.min(0)
  depth = np.where(lowest >= -1e-5,
                   1.0 / np.sum(bary / points[faces, 2].T[..., None], 0),
                   np.inf)
  best = np.argmin(depth, 0)
  index = np.arange(px.size)
  winner = np.where(np.isfinite(depth[best, index]), best, -1)
  return winner.reshape(size, size), lowest[best, index].reshape(size, size)


def canonical_to_view(depth, view):
  """Warped vertices `[S * S, 3]` of a canonical depth map, in NumPy."""
  size = depth.shape[-1]
  center = np.array([0.0, 0.0, ROT_CENTER])
  points = (rays(size) * depth[..., None]).reshape(-1, 3)
  return (points - center) @ euler(*view[:3]).T + center + view[3:]


@functools.lru_cache(maxsize=None)
def compiled_warp(size):
  """A `warp_canon_depth` traced once per size: dozens of evaluations follow."""
  return tf.function(Renderer(image_size=size).warp_canon_depth)


class TestDepthGradients:
  """Tape gradients of rendered depth against central finite differences."""

  size = 10
  eps = 1e-3
  view = np.array([0.1, 0.25, -0.05, 0.02, -0.01, 0.03])

  def setup_method(self):
    self.faces = Renderer(image_size=self.size).faces.numpy()
    self.depth = smooth_depth(np.random.default_rng(4), 1, self.size)[0]

  def winners(self, depth, view):
    return nearest_triangles(canonical_to_view(depth, view), self.faces,
                             self.size)

  def pick_pixels(self):
    """Four interior pixels well inside their triangle (brute force)."""
    winner, lowest = self.winners(self.depth, self.view)
    inside = (winner >= 0) & (lowest > 0.05)
    inside[:3], inside[-3:], inside[:, :3], inside[:, -3:] = (False,) * 4
    rows, cols = np.nonzero(inside)
    pick = np.random.default_rng(5).choice(len(rows), 4, replace=False)
    mask = np.zeros((self.size, self.size), bool)
    mask[rows[pick], cols[pick]] = True
    return mask, winner[mask]

  def assert_same_triangles(self, mask, triangles, depth, view):
    """The perturbation leaves each chosen pixel on its triangle."""
    np.testing.assert_array_equal(self.winners(depth, view)[0][mask],
                                  triangles)

  def loss(self, depth, view, mask):
    rendered = compiled_warp(self.size)(
        tf.constant(np.reshape(depth, [1, self.size, self.size]), tf.float32),
        tf.constant(np.reshape(view, [1, 6]), tf.float32))
    return tf.reduce_sum(tf.boolean_mask(rendered[0], mask))

  def tape_gradients(self, mask):
    depth = tf.constant(self.depth[None], tf.float32)
    view = tf.constant(self.view[None], tf.float32)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([depth, view])
      rendered = compiled_warp(self.size)(depth, view)
      value = tf.reduce_sum(tf.boolean_mask(rendered[0], mask))
    return (tape.gradient(value, depth).numpy()[0],
            tape.gradient(value, view).numpy()[0])

  def test_gradient_wrt_canonical_depth(self):
    """d(depth at 4 pixels)/d(canonical depth) = central differences."""
    mask, triangles = self.pick_pixels()
    vertices = sorted(set(self.faces[triangles].ravel()))
    # Plus vertices that no chosen pixel depends on: zero gradient.
    others = [k for k in (0, 5, 44, 99) if k not in vertices]
    grad_depth = self.tape_gradients(mask)[0].ravel()
    numeric = []
    for k in vertices + others:
      step = np.zeros(self.size * self.size)
      step[k] = self.eps
      step = step.reshape(self.size, self.size)
      for sign in (1, -1):
        self.assert_same_triangles(mask, triangles, self.depth + sign * step,
                                   self.view)
      numeric.append((float(self.loss(self.depth + step, self.view, mask)) -
                      float(self.loss(self.depth - step, self.view, mask))) /
                     (2 * self.eps))
    numeric = np.array(numeric)
    assert np.abs(numeric[:len(vertices)]).min() > 0.01  # all really matter
    np.testing.assert_allclose(grad_depth[vertices + others], numeric,
                               rtol=0.01, atol=1e-3)
    # The chosen pixels depend on their triangles' vertices only.
    np.testing.assert_array_equal(np.delete(grad_depth, vertices), 0.0)

  def test_gradient_wrt_view(self):
    """d(depth at 4 pixels)/d(view) = central differences per entry."""
    mask, triangles = self.pick_pixels()
    grad_view = self.tape_gradients(mask)[1]
    numeric = []
    for k in range(6):
      step = np.eye(6)[k] * self.eps
      for sign in (1, -1):
        self.assert_same_triangles(mask, triangles, self.depth,
                                   self.view + sign * step)
      numeric.append((float(self.loss(self.depth, self.view + step, mask)) -
                      float(self.loss(self.depth, self.view - step, mask))) /
                     (2 * self.eps))
    numeric = np.array(numeric)
    assert np.abs(numeric).max() > 0.5
    np.testing.assert_allclose(grad_view, numeric, rtol=0.01, atol=1e-3)


def test_render_yaw_shape_order_and_zero_angle():
  """[B, T, S, S, C], image-major; angle 0 is the image inside."""
  size = 12
  r = Renderer(image_size=size)
  rng = np.random.default_rng(6)
  depth = smooth_depth(rng, 2, size)
  image = rng.uniform(0, 1, (2, size, size, 2)).astype(np.float32)
  frames = r.render_yaw(image, depth.astype(np.float32),
                        [-0.4, 0.0, 0.3]).numpy()
  assert frames.shape == (2, 3, size, size, 2)
  inner = (slice(2, -2), slice(2, -2))
  for b in range(2):
    np.testing.assert_allclose(frames[b, 1][inner], image[b][inner],
                               atol=1e-4)
    for t in (0, 2):
      assert np.abs(frames[b, t] - image[b]).max() > 0.1  # it did turn


def test_render_yaw_turns_about_y_through_the_centre():
  """Yaw a shows a textured plane as the closed form of view (0, a, 0, ...)."""
  size, z0 = 16, 1.03
  angles = [-0.3, 0.45]
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  image = np.stack([0.1 * u - 0.05 * v + 0.2, 0.04 * u + 0.07 * v], -1)
  frames = Renderer(image_size=size).render_yaw(
      image[None].astype(np.float32), np.full((1, size, size), z0, np.float32),
      angles).numpy()[0]
  for frame, angle in zip(frames, angles):
    _, pixel, inside, distance = plane_scene(
        size, z0, np.array([0.0, angle, 0.0, 0.0, 0.0, 0.0]))
    clear = distance > 1e-3
    assert 0.3 < inside.mean() < 1.0
    expected = np.stack([0.1 * pixel[..., 0] - 0.05 * pixel[..., 1] + 0.2,
                         0.04 * pixel[..., 0] + 0.07 * pixel[..., 1]], -1)
    expected = np.where(inside[..., None], expected, 0.0)
    np.testing.assert_allclose(frame[clear], expected[clear], atol=1e-4)


def test_render_yaw_mirror_symmetry():
  """Mirror-symmetric depth and texture: yaw +a is the mirror image of yaw -a.

  The depth varies along u only, so every grid quad is planar and the
  triangulation's diagonal (which does not mirror) does not matter.
  """
  size = 16
  r = Renderer(image_size=size)
  u = np.arange(size) - (size - 1) / 2
  depth = 1.0 + 0.06 * np.cos(u / size * 5.0)
  depth = np.broadcast_to(depth, (1, size, size)).astype(np.float32)
  image = np.random.default_rng(7).uniform(0, 1, (1, size, size, 3))
  image = ((image + image[:, :, ::-1]) / 2).astype(np.float32)
  frames = r.render_yaw(image, depth, [-0.35, 0.35]).numpy()[0]
  assert np.abs(frames[0] - frames[1]).max() > 0.1  # the two views differ
  assert (frames[0].max(-1) == 0).any()  # the turned mesh leaves background
  np.testing.assert_allclose(frames[1], frames[0][:, ::-1], atol=1e-4)


@pytest.mark.parametrize("z0,expected,visible", [
    (0.5, 0.8, 1.0),  # nearer than min_depth - m: clamped, still visible
    (1.5, 1.2, 0.0),  # beyond max_depth + m: the far value, masked out
])
def test_rendered_depth_is_clamped_to_the_margin(z0, expected, visible):
  """DESIGN step 7: depth is clamped to [min - m, max + m], m = (max - min)/2.

  With the paper's range 0.9 .. 1.1, m = 0.1: [0.8, 1.2].
  """
  size = 8
  r = Renderer(image_size=size, min_depth=0.9, max_depth=1.1)
  image = np.ones((1, size, size, 1), np.float32)
  rendered, depth, mask = r.render_view(
      image, tf.fill([1, size, size], z0), tf.zeros([1, 6]))
  np.testing.assert_allclose(depth.numpy(), expected, atol=1e-6)
  np.testing.assert_array_equal(mask.numpy(), visible)
  np.testing.assert_allclose(rendered.numpy(), visible, atol=1e-5)


def test_shape_and_range_errors():
  """Depth must be [B, S, S]; the depth range must be 0 < min < max."""
  with pytest.raises(ValueError, match=r"\[B, 16, 16\]"):
    Renderer(image_size=16).warp_canon_depth(tf.ones([1, 8, 8]),
                                             tf.zeros([1, 6]))
  with pytest.raises(ValueError, match="min_depth"):
    Renderer(min_depth=1.2, max_depth=1.1)
  with pytest.raises(ValueError, match="min_depth"):
    Renderer(min_depth=0.0, max_depth=1.1)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
