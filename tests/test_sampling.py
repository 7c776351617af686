"""The bilinear sampler against a NumPy grid_sample(align_corners=True, zeros)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.rendering import bilinear_sample


def reference_sample(image, grid):
  """Loops over output pixels; taps outside the image read zero."""
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
            weight = (1 - abs(x - xx)) * (1 - abs(y - yy))
            if 0 <= xx < width and 0 <= yy < height:
              out[b, i, j] += weight * image[b, yy, xx]
  return out


def test_matches_reference_inside_and_outside_the_image():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 5, 7, 3))
  grid = rng.uniform(-1.4, 1.4, (2, 4, 6, 2))
  got = bilinear_sample(tf.constant(image, tf.float32),
                        tf.constant(grid, tf.float32))
  np.testing.assert_allclose(got.numpy(), reference_sample(image, grid),
                             atol=1e-5)


def test_corners_are_pixel_centres():
  """Grid -1 and +1 land exactly on the first and last pixel (align_corners)."""
  image = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
  grid = np.array([[[[-1, -1], [1, -1]], [[-1, 1], [1, 1]]]], np.float32)
  got = bilinear_sample(image, grid).numpy()[0, ..., 0]
  np.testing.assert_allclose(got, [[0, 3], [8, 11]], atol=1e-6)
  far = bilinear_sample(image, np.full((1, 1, 1, 2), 3.0, np.float32))
  assert float(far[0, 0, 0, 0]) == 0.0


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(1)
  image = tf.constant(rng.normal(size=(1, 4, 5, 2)))
  # Keep sample points away from integer pixel positions (kinks).
  pixels = rng.integers(0, 4, (1, 3, 3, 2)) + rng.uniform(0.2, 0.8, (1, 3, 3, 2))
  grid = tf.constant(pixels / [4.0, 3.0] * 2 - 1)
  weights = tf.constant(rng.normal(size=(1, 3, 3, 2)))
  loss = lambda im, g: tf.reduce_sum(bilinear_sample(im, g) * weights)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([image, grid])
    value = loss(image, grid)
  for variable, gradient in ((image, tape.gradient(value, image)),
                             (grid, tape.gradient(value, grid))):
    flat = variable.numpy().ravel()
    numeric = np.zeros_like(flat)
    for k in range(flat.size):
      step = np.zeros_like(flat)
      step[k] = 1e-6
      plus = tf.constant((flat + step).reshape(variable.shape))
      minus = tf.constant((flat - step).reshape(variable.shape))
      args = ((plus, grid), (minus, grid)) if variable is image else (
          (image, plus), (image, minus))
      numeric[k] = (float(loss(*args[0])) - float(loss(*args[1]))) / 2e-6
    np.testing.assert_allclose(gradient.numpy().ravel(), numeric, atol=1e-6)


def test_shape_errors():
  with pytest.raises(ValueError, match="image"):
    bilinear_sample(tf.zeros([4, 4, 3]), tf.zeros([1, 2, 2, 2]))
  with pytest.raises(ValueError, match="grid"):
    bilinear_sample(tf.zeros([1, 4, 4, 3]), tf.zeros([1, 2, 2, 3]))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
