"""Rigid view transforms of DESIGN section 2 on TensorFlow Graphics rotations.

A view is `[B, 6]`: (rx, ry, rz) in radians and (tx, ty, tz) in scene units.
R = Rz(rz) Ry(ry) Rx(rx) (TFG's `rotation_matrix_3d.from_euler`), applied
about the centre C = (0, 0, rot_center_depth): P' = R (P - C) + C + t.
"""

import tensorflow as tf
from tensorflow_graphics.geometry.transformation import euler
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


def compose_views(outer, inner):
  """The view that warps like `inner` followed by `outer`.

  warp_points(warp_points(P, inner), outer) = warp_points(P, composed) for
  the same rotation centre: R = R_outer R_inner, t = R_outer t_inner +
  t_outer, the rotation returned as Euler angles of R = Rz Ry Rx (exact
  while |ry| < 90 degrees).

  Args:
    outer, inner: `[B, 6]` view vectors (radians, scene units).

  Returns:
    `[B, 6]` composed view.
  """
  with tf.name_scope("compose_views"):
    outer, inner = _check_view(outer), _check_view(inner)
    r_outer = rotation_matrix(outer)
    rotation = tf.matmul(r_outer, rotation_matrix(inner))
    translation = tf.einsum("bij,bj->bi", r_outer, inner[:, 3:]) + outer[:, 3:]
    return tf.concat([euler.from_rotation_matrix(rotation), translation], -1)
