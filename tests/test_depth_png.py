"""The 16-bit depth PNG convention: values, clipping, NumPy and TF agree."""

import numpy as np
import tensorflow as tf

from tf_unsup3d.data import datasets
from tf_unsup3d.data import depth_png


def test_near_is_white_far_is_black_and_steps_are_even():
  depth = np.array([[0.9, 1.1], [1.0, 1.05]])
  values = depth_png.encode(depth, 0.9, 1.1)
  assert values.dtype == np.uint16 and values.shape == (2, 2)
  # g = (1.1 - d) / 0.2: 1, 0, 1/2 and 1/4 of 65535, rounded to nearest.
  np.testing.assert_array_equal(values, [[65535, 0], [32768, 16384]])


def test_depths_outside_the_range_are_clipped_not_wrapped():
  values = depth_png.encode([0.5, 0.9 - 1e-9, 1.1 + 1e-9, 3.0], 0.9, 1.1)
  np.testing.assert_array_equal(values, [65535, 65535, 0, 0])


def test_decode_inverts_encode_to_a_quantisation_step():
  depth = np.random.default_rng(0).uniform(0.5, 2.0, (7, 9))
  decoded = depth_png.decode(depth_png.encode(depth, 0.5, 2.0), 0.5, 2.0)
  assert decoded.dtype == np.float64
  np.testing.assert_allclose(decoded, depth, atol=0.5 * 1.5 / 65535 + 1e-12)


def test_tensorflow_png_reader_follows_the_same_convention():
  values = np.array([[0, 65535, 1], [32768, 16384, 65534]], np.uint16)
  png = tf.io.encode_png(values[..., None]).numpy()
  from_png = datasets.decode_depth(png, 0.9, 1.1).numpy()
  assert from_png.dtype == np.float32 and from_png.shape == (2, 3)
  np.testing.assert_allclose(from_png, 1.1 - 0.2 * values / 65535, atol=1e-6)
  np.testing.assert_allclose(depth_png.decode(values, 0.9, 1.1),
                             1.1 - 0.2 * values / 65535, atol=1e-12)
