"""Losses on hand-computed cases and brute-force NumPy loops."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import losses

EPS = 1e-7


def t(x):
  return tf.constant(np.asarray(x, np.float32))


def test_photometric_hand_computed():
  im1 = t([[[[0.5], [1.0]], [[-1.0], [0.0]]]])  # 1x2x2x1
  im2 = t([[[[0.0], [0.0]], [[0.0], [0.0]]]])
  assert float(losses.photometric_loss(im1, im2)) == pytest.approx(
      (0.5 + 1.0 + 1.0 + 0.0) / 4)
  mask = t([[[1.0, 0.0], [1.0, 0.0]]])
  assert float(losses.photometric_loss(im1, im2, mask)) == pytest.approx(
      (0.5 + 1.0) / 2)
  sigma = t([[[[2.0], [1.0]], [[0.5], [1.0]]]])
  expected = ((0.5 * math.sqrt(2) / 2 + math.log(2)) +
              (1.0 * math.sqrt(2) / 0.5 + math.log(0.5))) / 2
  got = losses.photometric_loss(im1, im2, mask, sigma)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_perceptual_hand_computed():
  f1 = t([[[[1.0, 2.0]]]])  # 1x1x1x2 features
  f2 = t([[[[0.0, 0.0]]]])
  assert float(losses.perceptual_loss(f1, f2)) == pytest.approx((1 + 4) / 2)
  sigma = t([[[[2.0]]]])
  expected = ((1 / 8 + math.log(2)) + (4 / 8 + math.log(2))) / 2
  mask = t([[[1.0, 0.0], [1.0, 1.0]]])  # pools to 0.75
  got = losses.perceptual_loss(f1, f2, mask, sigma)
  assert float(got) == pytest.approx(expected, rel=1e-5)  # ratio: 0.75 cancels


def numpy_photometric(im1, im2, mask, sigma):
  total, count = 0.0, 0.0
  for index in np.ndindex(im1.shape):
    b, i, j, _ = index
    e = abs(im1[index] - im2[index])
    if sigma is not None:
      s = sigma[b, i, j, 0]
      e = e * math.sqrt(2) / (s + EPS) + math.log(s + EPS)
    m = 1.0 if mask is None else mask[b, i, j]
    total += e * m
    count += m
  return total / count


def numpy_perceptual(f1, f2, mask, sigma):
  b_, h, w, _ = f1.shape
  if mask is not None:
    kh, kw = mask.shape[1] // h, mask.shape[2] // w
    pooled = np.zeros((b_, h, w))
    for b, i, j in np.ndindex(b_, h, w):
      pooled[b, i, j] = mask[b, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean()
  total, count = 0.0, 0.0
  for index in np.ndindex(f1.shape):
    b, i, j, _ = index
    e = (f1[index] - f2[index]) ** 2
    if sigma is not None:
      s = sigma[b, i, j, 0]
      e = e / (2 * s * s + EPS) + math.log(s + EPS)
    m = 1.0 if mask is None else pooled[b, i, j]
    total += e * m
    count += m
  return total / count


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("use_sigma", [False, True])
def test_against_numpy_loops(use_mask, use_sigma):
  rng = np.random.default_rng(0)
  im1, im2 = rng.uniform(-1, 1, (2, 2, 8, 8, 3))
  mask = (rng.uniform(size=(2, 8, 8)) > 0.3).astype(np.float32)
  sigma = rng.uniform(0.2, 2, (2, 8, 8, 1))
  f1, f2 = rng.normal(size=(2, 2, 2, 2, 5))
  fsigma = rng.uniform(0.2, 2, (2, 2, 2, 1))
  args = [mask if use_mask else None, sigma if use_sigma else None]
  got = losses.photometric_loss(t(im1), t(im2), *[None if a is None else t(a)
                                                   for a in args])
  assert float(got) == pytest.approx(numpy_photometric(im1, im2, *args),
                                     rel=1e-5)
  fargs = [mask if use_mask else None, fsigma if use_sigma else None]
  got = losses.perceptual_loss(t(f1), t(f2), *[None if a is None else t(a)
                                               for a in fargs])
  assert float(got) == pytest.approx(numpy_perceptual(f1, f2, *fargs),
                                     rel=1e-5)


def test_sums_of_half_batches_give_the_full_batch_loss():
  """Ratio of sums: what replicas must all-reduce to agree with one device."""
  rng = np.random.default_rng(1)
  im1, im2 = (t(rng.uniform(-1, 1, (4, 6, 6, 3))) for _ in range(2))
  mask = t((rng.uniform(size=(4, 6, 6)) > 0.5))
  sigma = t(rng.uniform(0.5, 1.5, (4, 6, 6, 1)))
  full = losses.photometric_loss(im1, im2, mask, sigma)
  parts = [losses.photometric_loss_sums(im1[s], im2[s], mask[s], sigma[s])
           for s in (slice(0, 1), slice(1, 4))]
  numerator = sum(float(p[0]) for p in parts)
  denominator = sum(float(p[1]) for p in parts)
  assert numerator / denominator == pytest.approx(float(full), rel=1e-5)
  # A mean of per-half means would differ: the halves have unequal masks.
  halves = [float(p[0] / p[1]) for p in parts]
  assert np.mean(halves) != pytest.approx(float(full), rel=1e-4)


def test_depth_smoothness_of_ramp_and_constant():
  ramp = np.tile(np.arange(5, dtype=np.float32) * 0.01, (1, 4, 1))  # along x
  got = losses.depth_smoothness(t(ramp), 0.9, 1.1)
  assert float(got) == pytest.approx(0.01 / 0.2)  # vertical term is 0
  assert float(losses.depth_smoothness(tf.ones([2, 4, 4]), 0.9, 1.1)) == 0.0


def test_second_order_depth_smoothness_against_loops():
  # Zero on any plane; on a parabola d = c x^2 every second difference
  # along x is 2c; otherwise a brute-force double loop.
  y, x = np.mgrid[0:6, 0:7].astype(np.float32)
  plane = (1.0 + 0.01 * x - 0.02 * y)[None]
  assert float(losses.depth_smoothness(t(plane), 0.9, 1.1, order=2)) == (
      pytest.approx(0.0, abs=2e-6))  # float32 rounding of values near 1
  parabola = (0.003 * x ** 2)[None]
  assert float(losses.depth_smoothness(t(parabola), 0.9, 1.1, order=2)) == (
      pytest.approx(0.006 / 0.2, rel=1e-4))
  depth = np.random.default_rng(3).uniform(0.9, 1.1, (2, 5, 6))
  expected = 0.0
  for d in depth:
    rows = [abs(d[i + 1, j] - 2 * d[i, j] + d[i - 1, j])
            for i in range(1, 4) for j in range(6)]
    cols = [abs(d[i, j + 1] - 2 * d[i, j] + d[i, j - 1])
            for i in range(5) for j in range(1, 5)]
    expected += (np.mean(rows) + np.mean(cols)) / 0.2
  got = losses.depth_smoothness(t(depth), 0.9, 1.1, order=2)
  assert float(got) == pytest.approx(expected / 2, rel=1e-4)


def test_second_order_prior_charges_a_dome_less_than_ripples():
  # The property the option exists for: against total variation, a broad
  # dome costs much less relative to short ripples of equal total variation.
  y, x = np.mgrid[0:64, 0:64].astype(np.float32)
  dome = t((1.0 - 0.09 * np.exp(-((x - 32) ** 2 + (y - 32) ** 2) / 400))[None])
  ripple = t((1.0 + 0.005 * np.sin(2 * np.pi * x / 6))[None])
  ratio = {order: float(losses.depth_smoothness(dome, 0.9, 1.1, order)) /
           float(losses.depth_smoothness(ripple, 0.9, 1.1, order))
           for order in (1, 2)}
  assert ratio[1] > 0.5 and ratio[2] < ratio[1] / 5
  with pytest.raises(ValueError, match="order"):
    losses.depth_smoothness(dome, 0.9, 1.1, order=3)


def test_depth_deviation_against_numpy_and_analytic_cases():
  rng = np.random.default_rng(3)
  depth = rng.uniform(0.9, 1.1, (5, 6, 7))
  expected = np.mean(np.abs(depth - depth.mean(axis=0))) / 0.2
  assert float(losses.depth_deviation(t(depth), 0.9, 1.1)) == pytest.approx(
      expected, rel=1e-5)
  # Equal shapes cost nothing; two shapes 0.04 apart each sit 0.02 from
  # their mean, 0.1 of the range.
  same = np.broadcast_to(depth[:1], depth.shape)
  assert float(losses.depth_deviation(t(same), 0.9, 1.1)) == pytest.approx(
      0.0, abs=1e-7)
  pair = np.stack([depth[0], depth[0] + 0.04])
  assert float(losses.depth_deviation(t(pair), 0.9, 1.1)) == pytest.approx(
      0.1, rel=1e-4)
  # Its gradient moves every depth towards the batch mean.
  x = t(depth)
  with tf.GradientTape() as tape:
    tape.watch(x)
    value = losses.depth_deviation(x, 0.9, 1.1)
  step = -tape.gradient(value, x).numpy()
  towards = np.sign(depth.mean(axis=0) - depth)
  assert np.all(np.sign(step) == towards)
  with pytest.raises(ValueError, match="depth"):
    losses.depth_deviation(tf.zeros([4, 4]), 0.9, 1.1)


def test_relative_depth_deviation_is_in_units_of_the_mean_relief():
  rng = np.random.default_rng(4)
  shape = rng.uniform(-1, 1, (6, 7))
  gains = rng.uniform(0.5, 1.5, (5, 1, 1))
  depth = 1.0 + 0.04 * gains * shape
  mean = depth.mean(axis=0)
  expected = (np.mean(np.abs(depth - mean)) /
              np.mean(np.abs(mean - mean.mean())))
  assert float(losses.depth_deviation(t(depth), 0.9, 1.1, relative=True)
               ) == pytest.approx(expected, rel=1e-4)
  # Scaling every relief by one factor leaves it unchanged, where the
  # absolute term scales with it.
  flatter = 1.0 + 0.5 * (depth - 1.0)
  assert float(losses.depth_deviation(t(flatter), 0.9, 1.1, relative=True)
               ) == pytest.approx(expected, rel=1e-3)
  assert float(losses.depth_deviation(t(flatter), 0.9, 1.1)) == pytest.approx(
      0.5 * float(losses.depth_deviation(t(depth), 0.9, 1.1)), rel=1e-3)
  # A flat mean shape divides by the floor, not by zero.
  pair = np.stack([np.full((6, 7), 0.99), np.full((6, 7), 1.01)])
  floor = losses.RELIEF_FLOOR * 0.2
  assert float(losses.depth_deviation(t(pair), 0.9, 1.1, relative=True)
               ) == pytest.approx(0.01 / floor, rel=1e-4)
  # The divisor is differentiable: its gradient is finite everywhere.
  x = t(depth)
  with tf.GradientTape() as tape:
    tape.watch(x)
    value = losses.depth_deviation(x, 0.9, 1.1, relative=True)
  assert np.all(np.isfinite(tape.gradient(value, x).numpy()))


def test_rank_errors_name_the_argument():
  with pytest.raises(ValueError, match="mask"):
    losses.photometric_loss(tf.zeros([1, 2, 2, 3]), tf.zeros([1, 2, 2, 3]),
                            tf.zeros([1, 2, 2, 1]))
  with pytest.raises(ValueError, match="depth"):
    losses.depth_smoothness(tf.zeros([4, 4]), 0.9, 1.1)


def test_xla_equals_eager():
  rng = np.random.default_rng(2)
  args = (t(rng.normal(size=(2, 4, 4, 6))), t(rng.normal(size=(2, 4, 4, 6))),
          t(rng.uniform(size=(2, 16, 16)) > 0.5), t(rng.uniform(0.5, 1, (2, 4, 4, 1))))
  eager = losses.perceptual_loss(*args)
  compiled = tf.function(losses.perceptual_loss, jit_compile=True)(*args)
  assert float(compiled) == pytest.approx(float(eager), rel=1e-5)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))


def _multiscale_reference(im1, im2, mask, factors):
  """NumPy loops: per scale, k x k cells whose pixels are all valid."""
  numerator = denominator = 0.0
  b, h, w, c = im1.shape
  for k in factors:
    for n in range(b):
      for i in range(0, h, k):
        for j in range(0, w, k):
          if mask[n, i:i + k, j:j + k].min() < 1:
            continue
          diff = (im1[n, i:i + k, j:j + k].mean(axis=(0, 1)) -
                  im2[n, i:i + k, j:j + k].mean(axis=(0, 1)))
          numerator += np.abs(diff).sum() * k * k
          denominator += c * k * k
  return numerator / denominator


def test_multiscale_photometric_loss_against_loops_and_analytic_cases():
  rng = np.random.default_rng(3)
  im1 = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  im2 = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  mask = np.ones((2, 16, 16), np.float32)
  mask[0, 3:7, 9:12] = 0.0
  mask[1, :, :5] = 0.0
  got = losses.multiscale_photometric_loss(im1, im2, mask, (2, 4, 8))
  np.testing.assert_allclose(float(got), _multiscale_reference(
      im1, im2, mask, (2, 4, 8)), rtol=1e-5)
  # A constant offset reads as that offset at every scale.
  full = np.ones((2, 16, 16), np.float32)
  np.testing.assert_allclose(float(losses.multiscale_photometric_loss(
      im2 + 0.25, im2, full, (2, 4))), 0.25, rtol=1e-5)
  # Differences inside the invalid region never count.
  changed = im2.copy()
  changed[1, :, :4] += 1.0
  assert float(losses.multiscale_photometric_loss(
      changed, im2, mask, (2, 4, 8))) == 0.0
  # Pixel noise that averages out over each 2 x 2 cell is invisible to it.
  checker = np.indices((16, 16)).sum(axis=0) % 2 * 2.0 - 1.0
  noisy = im2 + 0.1 * checker[None, :, :, None].astype(np.float32)
  assert float(losses.multiscale_photometric_loss(
      noisy, im2, full, (2, 4))) < 1e-6
