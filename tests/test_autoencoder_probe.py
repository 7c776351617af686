"""The autoencoder probe's measurements (benchmarks/autoencoder_probe.py)."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

# benchmarks/ is not an installed package: import it from the repository.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks import autoencoder_probe  # noqa: E402  pylint: disable=g-import-not-at-top
from tf_unsup3d import networks  # noqa: E402


def test_relative_variation_is_zero_for_equal_images_and_one_for_swaps():
  same = np.tile(np.arange(6.0).reshape(1, 2, 3), [4, 1, 1])
  assert autoencoder_probe.relative_variation(same) == 0.0
  # Two units that swap 0 and 2 between two images: std 1, mean |a| 1.
  swapped = np.array([[0.0, 2.0], [2.0, 0.0]])
  assert autoencoder_probe.relative_variation(swapped) == pytest.approx(1.0)
  # Scale-free: the same pattern at any magnitude.
  assert autoencoder_probe.relative_variation(
      swapped * 1e-3) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [64, 128])
def test_code_and_output_are_the_bottleneck_and_the_network_output(size):
  tf.keras.utils.set_random_seed(0)
  net = networks.EDDeconv(3, zdim=8, nf=4, activation="tanh", image_size=size)
  x = tf.random.uniform([2, size, size, 3], -1.0, 1.0)
  code, out = autoencoder_probe.code_and_output(net, x)
  assert code.shape == (2, 1, 1, 8)
  assert float(tf.reduce_min(code)) >= 0.0  # after the code's ReLU
  np.testing.assert_allclose(out, net(x), atol=1e-6)
