"""Depth evaluation of the paper (DESIGN section 7): SIDE and MAD.

All scores are per image `[B]`; an image whose mask is empty scores NaN,
which callers must treat as "no valid pixels", never as a perfect score.
"""

import math

import tensorflow as tf

from tf_unsup3d import shapes


def erode_mask(mask):
  """Erodes a `[B, H, W]` {0, 1} mask by one pixel.

  A 3x3 average with zero padding counted in the average (PyTorch's
  avg_pool2d default), kept where > 0.99: the image border is eroded too.
  """
  with tf.name_scope("erode_mask"):
    padded = tf.pad(tf.cast(mask, tf.float32)[..., None],
                    [[0, 0], [1, 1], [1, 1], [0, 0]])
    average = tf.nn.avg_pool2d(padded, 3, 1, "VALID")[..., 0]
    return tf.cast(average > 0.99, tf.float32)


def foreground_mask(depth_gt):
  """1 where ground-truth depth `[B, H, W]` is below that image's maximum."""
  with tf.name_scope("foreground_mask"):
    far = tf.reduce_max(depth_gt, axis=[1, 2], keepdims=True)
    return tf.cast(depth_gt < far, tf.float32)


def evaluation_mask(depth_gt, recon_mask):
  """Pixels foreground in both ground truth and prediction, each eroded.

  Args:
    depth_gt: `[B, H, W]` ground-truth depth, background at its maximum.
    recon_mask: `[B, H, W]` {0, 1} pixels the predicted surface covers in
      the input view (the reference scores the original branch's mask, not
      the one valid in both branches that the losses use).
  """
  return erode_mask(foreground_mask(depth_gt)) * erode_mask(recon_mask)


def _masked_image_mean(values, mask):
  return (tf.reduce_sum(values * mask, axis=[1, 2]) /
          tf.reduce_sum(mask, axis=[1, 2]))


def scale_invariant_depth_error(depth_pred, depth_gt, mask):
  """SIDE per image `[B]`: the std over the mask of log d_pred - log d_gt.

  Args:
    depth_pred, depth_gt: `[B, H, W]` positive depths.
    mask: `[B, H, W]` {0, 1}.
  """
  with tf.name_scope("scale_invariant_depth_error"):
    shapes.check_shape(depth_pred, "depth_pred", ("B", "H", "W"))
    shapes.check_shape(depth_gt, "depth_gt", ("B", "H", "W"))
    mask = tf.cast(mask, tf.float32)
    delta = (tf.math.log(depth_pred) - tf.math.log(depth_gt)) * mask
    mean = _masked_image_mean(delta, mask)
    return tf.sqrt(_masked_image_mean(
        tf.square(delta - mean[:, None, None]), mask))


def mean_angle_deviation(normal_pred, normal_gt, mask):
  """MAD per image `[B]`: mean angle in degrees between normals `[B, H, W, 3]`.

  The angle between directions, atan2(|a x b|, a . b): it does not depend on
  the vectors' lengths. Normals from depth are divided by |n| + 1e-7 like
  the reference's, which leaves them ~0.3% short at 64x64, so the acos of
  their dot product (`mean_angle_deviation_acos`) reads about 6 degrees for
  identical normals; this is the exact angle.
  """
  with tf.name_scope("mean_angle_deviation"):
    shapes.check_shape(normal_pred, "normal_pred", ("B", "H", "W", 3))
    shapes.check_shape(normal_gt, "normal_gt", ("B", "H", "W", 3))
    sine = tf.norm(tf.linalg.cross(normal_pred, normal_gt), axis=-1)
    cosine = tf.reduce_sum(normal_pred * normal_gt, axis=-1)
    angle = tf.atan2(sine, cosine) * (180.0 / math.pi)
    return _masked_image_mean(angle, tf.cast(mask, tf.float32))


def mean_angle_deviation_acos(normal_pred, normal_gt, mask):
  """MAD per image `[B]` as the reference computes it: acos(clip(a . b)).

  The convention of the paper's Table 2 numbers: with the normals of
  `Renderer.normals_from_depth` (slightly shorter than unit, see
  `mean_angle_deviation`) identical normals read a few degrees, depending on
  the depth and the image size, so the values are comparable with the
  paper's but not the exact angle.

  Args:
    normal_pred, normal_gt: `[B, H, W, 3]` normals.
    mask: `[B, H, W]` {0, 1}.
  """
  with tf.name_scope("mean_angle_deviation_acos"):
    shapes.check_shape(normal_pred, "normal_pred", ("B", "H", "W", 3))
    shapes.check_shape(normal_gt, "normal_gt", ("B", "H", "W", 3))
    cosine = tf.reduce_sum(normal_pred * normal_gt, axis=-1)
    angle = tf.acos(tf.clip_by_value(cosine, -1.0, 1.0)) * (180.0 / math.pi)
    return _masked_image_mean(angle, tf.cast(mask, tf.float32))
