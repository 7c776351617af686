"""The paper's reconstruction losses as pure functions (DESIGN section 1).

Masked means are ratios over the whole batch: the sum of masked errors over
the sum of the mask. Each loss also has a `*_sums` form returning that
numerator and denominator, so that replicas can all-reduce the denominators
and agree with a single device.
"""

import math

import tensorflow as tf

from tf_unsup3d import shapes

EPS = 1e-7


def _masked_sums(error, mask):
  """(sum(error * mask), sum(mask)) with `[B, h, w]` mask broadcast to error."""
  if mask is None:
    return tf.reduce_sum(error), tf.cast(tf.size(error), error.dtype)
  mask = tf.broadcast_to(mask[..., None], tf.shape(error))
  return tf.reduce_sum(error * mask), tf.reduce_sum(mask)


def photometric_loss_sums(im1, im2, mask=None, conf_sigma=None):
  """Numerator and denominator of `photometric_loss` (scalars)."""
  with tf.name_scope("photometric_loss"):
    shapes.check_shape(im1, "im1", ("B", "H", "W", "C"))
    shapes.check_shape(im2, "im2", ("B", "H", "W", "C"))
    error = tf.abs(im1 - im2)
    if conf_sigma is not None:
      shapes.check_shape(conf_sigma, "conf_sigma", ("B", "H", "W", 1))
      error = (error * math.sqrt(2.0) / (conf_sigma + EPS) +
               tf.math.log(conf_sigma + EPS))
    if mask is not None:
      shapes.check_shape(mask, "mask", ("B", "H", "W"))
    return _masked_sums(error, mask)


def photometric_loss(im1, im2, mask=None, conf_sigma=None):
  """L1 reconstruction loss, optionally a Laplacian likelihood with confidence.

  Per element |im1 - im2|, or |im1 - im2| sqrt(2) / sigma + log sigma.

  Args:
    im1, im2: `[B, H, W, C]` images in [-1, 1].
    mask: optional `[B, H, W]` {0, 1} valid-pixel mask.
    conf_sigma: optional `[B, H, W, 1]` confidence, > 0.

  Returns:
    Scalar: masked mean over all pixels and channels of the batch.
  """
  numerator, denominator = photometric_loss_sums(im1, im2, mask, conf_sigma)
  return numerator / denominator


def perceptual_loss_sums(feat1, feat2, mask=None, conf_sigma=None):
  """Numerator and denominator of `perceptual_loss` (scalars)."""
  with tf.name_scope("perceptual_loss"):
    shapes.check_shape(feat1, "feat1", ("B", "h", "w", "F"))
    shapes.check_shape(feat2, "feat2", ("B", "h", "w", "F"))
    error = tf.square(feat1 - feat2)
    if conf_sigma is not None:
      shapes.check_shape(conf_sigma, "conf_sigma", ("B", "h", "w", 1))
      error = (error / (2.0 * tf.square(conf_sigma) + EPS) +
               tf.math.log(conf_sigma + EPS))
    if mask is not None:
      shapes.check_shape(mask, "mask", ("B", "H", "W"))
      h, w = feat1.shape[1], feat1.shape[2]
      kernel = (mask.shape[1] // h, mask.shape[2] // w)
      mask = tf.nn.avg_pool2d(mask[..., None], kernel, kernel, "VALID")[..., 0]
    return _masked_sums(error, mask)


def perceptual_loss(feat1, feat2, mask=None, conf_sigma=None):
  """Perceptual loss on features, optionally a Gaussian likelihood with confidence.

  Per element (f1 - f2)^2, or (f1 - f2)^2 / (2 sigma^2) + log sigma. The
  pixel mask is average-pooled to the feature resolution.

  Args:
    feat1, feat2: `[B, h, w, F]` features (VGG16 relu3_3: h = H / 4).
    mask: optional `[B, H, W]` {0, 1} pixel mask, H a multiple of h.
    conf_sigma: optional `[B, h, w, 1]` confidence, > 0.

  Returns:
    Scalar masked mean.
  """
  numerator, denominator = perceptual_loss_sums(feat1, feat2, mask, conf_sigma)
  return numerator / denominator


def multiscale_photometric_loss_sums(im1, im2, mask, factors=(2, 4, 8)):
  """Numerator and denominator of `multiscale_photometric_loss` (scalars)."""
  with tf.name_scope("multiscale_photometric_loss"):
    im1, im2, mask = (tf.convert_to_tensor(t, tf.float32)
                      for t in (im1, im2, mask))
    shapes.check_shape(im1, "im1", ("B", "H", "W", "C"))
    shapes.check_shape(im2, "im2", ("B", "H", "W", "C"))
    shapes.check_shape(mask, "mask", ("B", "H", "W"))
    mask = mask[..., None]
    numerator, denominator = 0.0, 0.0
    for k in factors:
      pool = lambda t, k=k: tf.nn.avg_pool2d(t, k, k, "VALID")  # noqa: E731
      # Only cells whose every pixel is valid: pooling across the mask's
      # edge would compare an image with part of the background.
      cell = tf.cast(pool(mask) > 1.0 - 1e-6, im1.dtype)
      error = tf.abs(pool(im1 * mask) - pool(im2 * mask)) * cell
      # Each scale weighs as much as the full-resolution L1 on its area.
      numerator += tf.reduce_sum(error) * float(k * k)
      denominator += tf.reduce_sum(cell) * float(k * k) * float(
          im1.shape[-1])
    return numerator, denominator


def multiscale_photometric_loss(im1, im2, mask, factors=(2, 4, 8)):
  """L1 between average-pooled images: a coarse-to-fine alignment signal.

  The full-resolution L1 tells the view and the depth which way to move
  only within about a pixel of alignment; the same error on images pooled
  k x k reaches k pixels. It stands in for the perceptual loss's wide
  receptive field where VGG16 weights are not available. Per scale, the
  mean |pool(im1) - pool(im2)| over the cells whose k x k pixels are all
  valid; the scales are averaged weighting each cell by its k^2 pixels.

  Args:
    im1, im2: `[B, H, W, C]` images in [-1, 1].
    mask: `[B, H, W]` {0, 1} valid-pixel mask.
    factors: pooling factors, each dividing H and W.

  Returns:
    Scalar >= 0.
  """
  numerator, denominator = multiscale_photometric_loss_sums(im1, im2, mask,
                                                            factors)
  return numerator / denominator


# Orders of `depth_smoothness`: first (total variation) or second differences.
DEPTH_SMOOTHNESS_ORDERS = (1, 2)


def depth_smoothness_sums(depth, min_depth, max_depth, order=1):
  """`depth_smoothness` as (sum of per-image terms, number of images)."""
  with tf.name_scope("depth_smoothness"):
    shapes.check_shape(depth, "depth", ("B", "H", "W"))
    if order not in DEPTH_SMOOTHNESS_ORDERS:
      raise ValueError(f"depth smoothness order must be 1 or 2, got {order}.")
    scale = max_depth - min_depth
    vertical, horizontal = depth, depth
    for _ in range(order):
      vertical = vertical[:, 1:, :] - vertical[:, :-1, :]
      horizontal = horizontal[:, :, 1:] - horizontal[:, :, :-1]
    per_image = (tf.reduce_mean(tf.abs(vertical), axis=[1, 2]) +
                 tf.reduce_mean(tf.abs(horizontal), axis=[1, 2]))
    count = tf.cast(tf.shape(depth)[0], depth.dtype)
    return tf.reduce_sum(per_image) / scale, count


def depth_smoothness(depth, min_depth, max_depth, order=1):
  """Smoothness prior on depth `[B, H, W]`, normalised by the depth range.

  order 1, total variation (the reference's term):
    mean |d[:, 1:] - d[:, :-1]| + mean |d[:, :, 1:] - d[:, :, :-1]|.
  order 2, the same on second differences,
    mean |d[:, 2:] - 2 d[:, 1:-1] + d[:, :-2]| + (the same across columns):
    zero on any plane, so it leaves a tilt or a broad dome nearly free while
    a ripple of wavelength L pixels costs about 2 pi / L times its
    total variation; total variation charges a relief h about h per
    crossing whatever its shape, and favours cones and pyramids.
  Each is divided by (max_depth - min_depth). Scalar >= 0.
  """
  numerator, denominator = depth_smoothness_sums(depth, min_depth, max_depth,
                                                 order)
  return numerator / denominator


# Of the depth range: the smallest mean relief `depth_deviation(...,
# relative=True)` divides by, so that a flat mean shape does not blow it up.
RELIEF_FLOOR = 0.01


def depth_deviation_sums(depth, min_depth, max_depth, relative=False):
  """`depth_deviation` as (sum of per-image terms, number of images)."""
  with tf.name_scope("depth_deviation"):
    shapes.check_shape(depth, "depth", ("B", "H", "W"))
    mean = tf.reduce_mean(depth, axis=0, keepdims=True)
    per_image = tf.reduce_mean(tf.abs(depth - mean), axis=[1, 2])
    count = tf.cast(tf.shape(depth)[0], depth.dtype)
    if not relative:
      return tf.reduce_sum(per_image) / (max_depth - min_depth), count
    relief = tf.reduce_mean(
        tf.abs(mean - tf.reduce_mean(mean, axis=[1, 2], keepdims=True)))
    floor = RELIEF_FLOOR * (max_depth - min_depth)
    return tf.reduce_sum(per_image) / tf.maximum(relief, floor), count


def depth_deviation(depth, min_depth, max_depth, relative=False):
  """Spread of canonical depths `[B, H, W]` about their batch mean.

  mean |d - mean_b(d)| / (max_depth - min_depth): the per-image deformation
  of a category's shape from the batch's mean shape. Penalising it keeps
  what the images share in one template and leaves each image only the
  deformation its pixels pay for, so the depth cannot take up what the
  view, light or albedo should explain (a pitch as a per-image tilt, a
  darker skin as a deeper face). The mean is over the batch given (under
  a distribution strategy, one replica's). Scalar >= 0; 0 iff all depths
  are equal.

  relative=True divides by the mean shape's own relief instead, mean over
  pixels of |m - mean(m)| for the batch mean m (at least `RELIEF_FLOOR` of
  the depth range): the spread in units of the shared shape, unchanged
  when every depth's relief is scaled by one factor. The absolute term is
  lowered by flattening every face at once, so a heavy weight on it
  flattens the shared shape too; the relative one is not, and its
  gradient through the divisor favours relief over per-image spread.
  """
  numerator, denominator = depth_deviation_sums(depth, min_depth, max_depth,
                                                relative)
  return numerator / denominator
