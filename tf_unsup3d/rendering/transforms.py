"""Rigid view transforms of DESIGN section 2 on TensorFlow Graphics rotations.

A view is `[B, 6]`: (rx, ry, rz) in radians and (tx, ty, tz) in scene units.
R = Rz(rz) Ry(ry) Rx(rx) (TFG's `rotation_matrix_3d.from_euler`), applied
about the centre C = (0, 0, rot_center_depth): P' = R (P - C) + C + t.
"""

import tensorflow as tf
from tensorflow_graphics.geometry.transformation import rotation_matrix_3d

from tf_unsup3d import shapes


def _check_view(view):
  view = tf.convert_to_tensor(view, tf.float32)
  shapes.check_shape(view, "view", ("B", 6), "(rx, ry, rz, tx, ty, tz)")
  return view


def rotation_matrix(view):
  """R = Rz Ry Rx `[B, 3, 3]` from the first three entries of a `[B, 6]` view."""
  view = _check_view(view)
  return rotation_matrix_3d.from_euler(view[:, :3])


def warp_points(points, view, rot_center_depth):
  """Canonical-to-view warp P' = R (P - C) + C + t.

  Args:
    points: `[B, N, 3]` camera-space points.
    view: `[B, 6]` view vectors.
    rot_center_depth: z of the rotation centre C.

  Returns:
    `[B, N, 3]` warped points.
  """
  with tf.name_scope("warp_points"):
    view = _check_view(view)
    center = tf.constant([0.0, 0.0, rot_center_depth], tf.float32)
    rotated = tf.einsum("bij,bnj->bni", rotation_matrix(view), points - center)
    return rotated + center + view[:, None, 3:]


def inverse_warp_points(points, view, rot_center_depth):
  """View-to-canonical warp P = R^T (P' - t - C) + C, the inverse of `warp_points`."""
  with tf.name_scope("inverse_warp_points"):
    view = _check_view(view)
    center = tf.constant([0.0, 0.0, rot_center_depth], tf.float32)
    shifted = points - view[:, None, 3:] - center
    return tf.einsum("bji,bnj->bni", rotation_matrix(view), shifted) + center
