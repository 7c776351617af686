"""Surface normals from lifted depth and Lambertian shading (DESIGN section 2)."""

import math

import tensorflow as tf
from tensorflow_graphics.rendering.reflectance import lambertian

from tf_unsup3d import shapes

_EPS = 1e-7


def _cross(a, b):
  """Cross product over the last axis from elementwise ops.

  Same arithmetic as `tf.linalg.cross`, whose `Cross` op has no TFLite
  builtin (the TFLite export converts the normals).
  """
  ax, ay, az = tf.unstack(a, axis=-1)
  bx, by, bz = tf.unstack(b, axis=-1)
  return tf.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx],
                  axis=-1)


def normals_from_points(points):
  """Unit normals of a lifted depth grid by central differences.

  n = normalise(tu x tv) with tu = P[v, u+1] - P[v, u-1] and
  tv = P[v+1, u] - P[v-1, u]. With x right, y down and z forward this points
  away from the camera: a fronto-parallel plane has n = (0, 0, 1). The
  one-pixel border gets (0, 0, 1).

  Args:
    points: `[B, H, W, 3]` camera-space points of a depth map.

  Returns:
    `[B, H, W, 3]` unit normals.
  """
  with tf.name_scope("normals_from_points"):
    shapes.check_shape(points, "points", ("B", "H", "W", 3))
    tu = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    tv = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
    normal = _cross(tu, tv)
    normal = normal / (tf.norm(normal, axis=-1, keepdims=True) + _EPS)
    # Pad x and y with 0 and z with 1: the border normal is (0, 0, 1).
    paddings = [[0, 0], [1, 1], [1, 1], [0, 0]]
    xy = tf.pad(normal[..., :2], paddings)
    z = tf.pad(normal[..., 2:], paddings, constant_values=1.0)
    return tf.concat([xy, z], axis=-1)


def light_direction(light_dxy):
  """Unit light direction normalise(dx, dy, 1) `[B, 3]` from `[B, 2]`."""
  with tf.name_scope("light_direction"):
    ones = tf.ones_like(light_dxy[:, :1])
    direction = tf.concat([light_dxy, ones], axis=-1)
    return direction / tf.norm(direction, axis=-1, keepdims=True)


def diffuse_shading(normal, light_dir, view_dir):
  """Lambertian diffuse term max(0, n . l) through TFG's Lambertian BRDF.

  DESIGN's normals and light direction both point away from the camera, so
  n . l > 0 means lit. TFG's `lambertian.brdf` uses the physical convention:
  the normal faces the viewer and the incoming-light vector travels from the
  light to the surface. The mapping is therefore: TFG normal = -n, incoming
  light = l (minus the direction to the light, -l), outgoing = direction to
  the camera. TFG returns albedo / pi where both directions lie on the
  normal's side, so pi * brdf(albedo=1) * max(0, n . l) is the shading.

  Args:
    normal: `[B, H, W, 3]` unit normals (DESIGN convention).
    light_dir: `[B, 3]` unit light directions (DESIGN convention).
    view_dir: `[B, H, W, 3]` unit vectors from the surface to the camera.
      For a lifted depth map these always face the surface (n . P >= 0 up
      to discretisation), so TFG's visibility gate only drops surfaces seen
      from behind, which the paper's max(0, n . l) would have lit.

  Returns:
    `[B, H, W, 1]` diffuse shading in [0, 1].
  """
  with tf.name_scope("diffuse_shading"):

    def gate(example):
      n, l, v = example
      return math.pi * lambertian.brdf(
          direction_incoming_light=tf.broadcast_to(l, tf.shape(n)),
          direction_outgoing_light=v,
          surface_normal=-n,
          albedo=tf.ones_like(n))[..., :1]

    if normal.shape[0] is not None:
      visible = gate((normal, light_dir[:, None, None, :], view_dir))
    else:
      # `brdf` broadcasts to the *static* shape with unknown dimensions taken
      # as 1, which breaks graphs traced with an unknown batch size (serving
      # signatures); per example, vectorised, every shape is known.
      visible = tf.vectorized_map(gate, (normal, light_dir, view_dir))
    cosine = tf.reduce_sum(normal * light_dir[:, None, None, :], axis=-1,
                           keepdims=True)
    return visible * tf.nn.relu(cosine)
