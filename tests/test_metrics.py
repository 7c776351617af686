"""SIDE, MAD and the evaluation masks on hand-computed cases."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import metrics


def t(x):
  return tf.constant(np.asarray(x, np.float32))


def test_side_is_scale_invariant_and_hand_computed():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0.9, 1.1, (2, 5, 5))
  mask = np.ones((2, 5, 5))
  for scale in (0.5, 1.0, 3.0):
    side = metrics.scale_invariant_depth_error(t(gt * scale), t(gt), t(mask))
    np.testing.assert_allclose(side.numpy(), 0.0, atol=1e-3)
  # Two masked pixels with log-ratios a and b: SIDE = |a - b| / 2.
  pred = np.ones((1, 2, 2))
  pred[0, 0, 0], pred[0, 0, 1], pred[0, 1, 1] = math.e ** 0.1, math.e ** 0.4, 9
  mask = t([[[1, 1], [0, 0]]])
  side = metrics.scale_invariant_depth_error(t(pred), tf.ones([1, 2, 2]), mask)
  assert float(side[0]) == pytest.approx(0.15, rel=1e-4)


def test_mad_of_known_angles():
  a = np.zeros((1, 1, 3, 3))
  a[..., 2] = 1.0
  b = np.array([[[[0, 0, 1], [1, 0, 0],
                  [0, math.sin(math.radians(60)), math.cos(math.radians(60))]]]])
  per_pixel = [0.0, 90.0, 60.0]
  for k in range(3):
    mask = np.zeros((1, 1, 3))
    mask[0, 0, k] = 1
    mad = metrics.mean_angle_deviation(t(a), t(b), t(mask))
    assert float(mad[0]) == pytest.approx(per_pixel[k], abs=1e-2)
  mad = metrics.mean_angle_deviation(t(a), t(b), t([[[1, 1, 1]]]))
  assert float(mad[0]) == pytest.approx(50.0, abs=1e-2)


def test_mad_acos_convention_reads_short_normals_as_an_angle():
  # Unit normals: both conventions give the true angle.
  a = np.zeros((1, 1, 2, 3))
  a[..., 2] = 1.0
  b = np.array([[[[0, 0, 1], [0, math.sin(0.3), math.cos(0.3)]]]])
  exact = metrics.mean_angle_deviation(t(a), t(b), t([[[0, 1]]]))
  acos = metrics.mean_angle_deviation_acos(t(a), t(b), t([[[0, 1]]]))
  assert float(acos[0]) == pytest.approx(math.degrees(0.3), abs=1e-2)
  assert float(exact[0]) == pytest.approx(math.degrees(0.3), abs=1e-2)
  # Identical directions 1% short: exact 0, acos reads acos(0.99^2).
  short = a * 0.99
  exact = metrics.mean_angle_deviation(t(short), t(short), t([[[1, 1]]]))
  acos = metrics.mean_angle_deviation_acos(t(short), t(short), t([[[1, 1]]]))
  assert float(exact[0]) == pytest.approx(0.0, abs=1e-3)
  assert float(acos[0]) == pytest.approx(math.degrees(math.acos(0.99 ** 2)),
                                         rel=1e-3)
  # Opposite directions: the clip keeps acos defined.
  acos = metrics.mean_angle_deviation_acos(t(a * 1.01), t(-a * 1.01),
                                           t([[[1, 1]]]))
  assert float(acos[0]) == pytest.approx(180.0, abs=1e-3)


def test_erode_mask():
  square = np.zeros((1, 7, 7))
  square[0, 2:5, 2:5] = 1
  eroded = metrics.erode_mask(t(square)).numpy()[0]
  expected = np.zeros((7, 7))
  expected[3, 3] = 1
  np.testing.assert_array_equal(eroded, expected)
  full = metrics.erode_mask(tf.ones([1, 5, 6])).numpy()[0]
  expected = np.zeros((5, 6))
  expected[1:-1, 1:-1] = 1  # zero padding erodes the image border
  np.testing.assert_array_equal(full, expected)


def test_foreground_uses_each_images_own_maximum():
  depth = t([[[1.0, 2.0], [3.0, 3.0]], [[5.0, 5.0], [4.0, 1.0]]])
  np.testing.assert_array_equal(metrics.foreground_mask(depth).numpy(),
                                [[[1, 1], [0, 0]], [[0, 0], [1, 1]]])
  depth = np.full((1, 6, 6), 2.0)
  depth[0, 1:5, 1:5] = 1.0
  recon = np.ones((1, 6, 6))
  mask = metrics.evaluation_mask(t(depth), t(recon)).numpy()[0]
  expected = np.zeros((6, 6))
  expected[2:4, 2:4] = 1
  np.testing.assert_array_equal(mask, expected)


def test_empty_mask_is_nan_not_zero():
  side = metrics.scale_invariant_depth_error(tf.ones([1, 3, 3]),
                                             tf.ones([1, 3, 3]),
                                             tf.zeros([1, 3, 3]))
  assert np.isnan(side.numpy()[0])


def test_xla_equals_eager():
  rng = np.random.default_rng(1)
  args = (t(rng.uniform(0.9, 1.1, (2, 6, 6))), t(rng.uniform(0.9, 1.1, (2, 6, 6))),
          t(rng.uniform(size=(2, 6, 6)) > 0.3))
  eager = metrics.scale_invariant_depth_error(*args)
  compiled = tf.function(metrics.scale_invariant_depth_error,
                         jit_compile=True)(*args)
  np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-5)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
