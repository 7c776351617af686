"""Bilinear sampler against NumPy grid_sample(align_corners=True, zeros)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import bilinear_sample


def reference_sample(image, grid):
  """torch grid_sample(bilinear, align_corners=True, padding_mode='zeros').

  Grid -1 is pixel 0 and +1 pixel S - 1; each of the four taps around the
  sample point reads zero when it lies outside the image.
  """
  batch, height, width, channels = image.shape
  out = np.zeros(grid.shape[:3] + (channels,))
  for b in range(batch):
    for i in range(grid.shape[1]):
      for j in range(grid.shape[2]):
        x = (grid[b, i, j, 0] + 1) / 2 * (width - 1)
        y = (grid[b, i, j, 1] + 1) / 2 * (height - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for yy in (y0, y0 + 1):
          for xx in (x0, x0 + 1):
            if 0 <= xx < width and 0 <= yy < height:
              weight = (1 - abs(x - xx)) * (1 - abs(y - yy))
              out[b, i, j] += weight * image[b, yy, xx]
  return out


def to_grid(x, y, height, width):
  """Pixel coordinates (x column, y row) to the [-1, 1] grid."""
  return np.stack([x / (width - 1) * 2 - 1, y / (height - 1) * 2 - 1], -1)


@pytest.mark.parametrize("height,width,out_shape", [
    (5, 7, (4, 6)), (8, 8, (8, 8)), (9, 4, (3, 11)),
])
def test_matches_reference_inside_and_outside_the_image(height, width,
                                                        out_shape):
  """Random images and grids in [-1.5, 1.5] equal the NumPy reference."""
  rng = np.random.default_rng(height * width)
  image = rng.normal(size=(2, height, width, 3))
  grid = rng.uniform(-1.5, 1.5, (2,) + out_shape + (2,))
  assert (np.abs(grid) > 1).any() and (np.abs(grid) < 1).all(-1).any()
  got = bilinear_sample(tf.constant(image, tf.float32),
                        tf.constant(grid, tf.float32))
  assert got.shape == (2,) + out_shape + (3,)
  np.testing.assert_allclose(got.numpy(), reference_sample(image, grid),
                             atol=2e-5)


def test_float64_matches_reference_exactly():
  """In float64 the sampler equals the reference to rounding."""
  rng = np.random.default_rng(1)
  image = rng.normal(size=(1, 6, 5, 2))
  grid = rng.uniform(-1.3, 1.3, (1, 7, 7, 2))
  got = bilinear_sample(tf.constant(image), tf.constant(grid)).numpy()
  np.testing.assert_allclose(got, reference_sample(image, grid), atol=1e-12)


def test_identity_grid_reproduces_a_non_square_image():
  """Grid u / (W - 1) * 2 - 1, v / (H - 1) * 2 - 1 reads every pixel back."""
  height, width = 5, 8
  image = np.random.default_rng(2).normal(size=(2, height, width, 3))
  v, u = np.mgrid[0:height, 0:width].astype(np.float64)
  grid = np.broadcast_to(to_grid(u, v, height, width), (2, height, width, 2))
  got = bilinear_sample(tf.constant(image, tf.float32),
                        tf.constant(grid, tf.float32)).numpy()
  np.testing.assert_allclose(got, image, atol=1e-5)


def test_corners_and_zero_padding():
  """+-1 are corner centres; half a pixel out gives half; beyond, 0."""
  height, width = 3, 4
  image = np.arange(1, 13, dtype=np.float32).reshape(1, height, width, 1)
  grid = np.array([[[[-1, -1], [1, -1]], [[-1, 1], [1, 1]]]], np.float32)
  got = bilinear_sample(image, grid).numpy()[0, ..., 0]
  np.testing.assert_allclose(got, [[1, 4], [9, 12]], atol=1e-6)
  # Half a pixel left of the first column and right of the last one, row 1.
  points = to_grid(np.array([-0.5, width - 0.5]), np.array([1.0, 1.0]),
                   height, width)
  got = bilinear_sample(image, points[None, None].astype(np.float32))
  np.testing.assert_allclose(
      got.numpy()[0, 0, :, 0],
      [0.5 * image[0, 1, 0, 0], 0.5 * image[0, 1, -1, 0]], atol=1e-5)
  far = to_grid(np.array([-1.25, width + 0.25, 1.5]),
                np.array([1.0, 1.0, height + 0.25]), height, width)
  got = bilinear_sample(image, far[None, None].astype(np.float32))
  np.testing.assert_array_equal(got.numpy(), 0.0)


def test_each_grid_reads_its_own_batch_entry():
  """Batch b of the output samples batch b of the image."""
  image = np.stack([np.full((4, 4, 1), 1.0), np.full((4, 4, 1), 7.0)])
  grid = np.zeros((2, 1, 1, 2))
  got = bilinear_sample(tf.constant(image, tf.float32),
                        tf.constant(grid, tf.float32)).numpy()
  np.testing.assert_allclose(got.ravel(), [1.0, 7.0])


def _off_integer(rng, shape, low, high):
  """Uniform samples at least 1e-2 away from every integer."""
  values = rng.uniform(low, high, shape)
  frac = values - np.floor(values)
  return np.floor(values) + np.clip(frac, 0.02, 0.98)


@pytest.mark.parametrize("height,width", [(4, 5), (6, 3)])
def test_gradients_match_central_differences(height, width):
  """Tape gradients w.r.t. image and grid equal central finite differences."""
  rng = np.random.default_rng(height + 10 * width)
  image = tf.constant(rng.normal(size=(2, height, width, 1)))
  # Pixel positions away from integers (the kinks), some outside the image.
  x = _off_integer(rng, (2, 2, 3), -1.5, width + 0.5)
  y = _off_integer(rng, (2, 2, 3), -1.5, height + 0.5)
  assert ((x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)).any()
  grid = tf.constant(to_grid(x, y, height, width))
  weights = tf.constant(rng.normal(size=(2, 2, 3, 1)))

  def loss(im, g):
    return tf.reduce_sum(bilinear_sample(im, g) * weights)

  with tf.GradientTape(persistent=True) as tape:
    tape.watch([image, grid])
    value = loss(image, grid)
  eps = 1e-6
  for which, variable in (("image", image), ("grid", grid)):
    analytic = tape.gradient(value, variable).numpy().ravel()
    flat = variable.numpy().ravel()
    numeric = np.zeros_like(flat)
    for k in range(flat.size):
      step = np.zeros_like(flat)
      step[k] = eps
      plus = tf.constant((flat + step).reshape(variable.shape))
      minus = tf.constant((flat - step).reshape(variable.shape))
      if which == "image":
        diff = float(loss(plus, grid)) - float(loss(minus, grid))
      else:
        diff = float(loss(image, plus)) - float(loss(image, minus))
      numeric[k] = diff / (2 * eps)
    assert np.abs(numeric).max() > 0.1  # the gradient is not trivially zero
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def test_shape_errors():
  """Images must be [B, H, W, C] and grids [B, Ho, Wo, 2]."""
  with pytest.raises(ValueError, match="image"):
    bilinear_sample(tf.zeros([4, 4, 3]), tf.zeros([1, 2, 2, 2]))
  with pytest.raises(ValueError, match="grid"):
    bilinear_sample(tf.zeros([1, 4, 4, 3]), tf.zeros([1, 2, 2, 3]))
  with pytest.raises(ValueError, match="grid"):
    bilinear_sample(tf.zeros([1, 4, 4, 3]), tf.zeros([1, 2, 2]))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
