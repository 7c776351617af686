"""The renderer of the paper: canonical depth -> input view, and back."""

import tensorflow as tf

from tf_unsup3d import shapes
from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import rasterizer
from tf_unsup3d.rendering import sampling
from tf_unsup3d.rendering import shading
from tf_unsup3d.rendering import transforms


class Renderer:
  """Warps canonical depth maps into a view and builds the sampling grid back.

  Conventions of DESIGN section 2: square `image_size` images, perspective
  camera with `fov` degrees, x right / y down / z forward, views `[B, 6]`
  (rx, ry, rz in radians; tx, ty, tz in scene units) rotating about
  (0, 0, rot_center_depth). No weights: a plain object.
  """

  def __init__(self, image_size=64, fov=10.0, min_depth=0.9, max_depth=1.1,
               rot_center_depth=None,
               candidate_chunk=rasterizer.DEFAULT_CANDIDATE_CHUNK):
    """Args:
      image_size: S, the side of the square images in pixels.
      fov: field of view in degrees.
      min_depth, max_depth: the canonical depth range (scene units).
      rot_center_depth: z of the rotation centre; default the mid depth.
      candidate_chunk: (triangle, pixel) pairs per step of the visibility
        pass (`rasterizer.visible_triangles`; memory ~150 B each).
    """
    if min_depth <= 0 or max_depth <= min_depth:
      raise ValueError("Need 0 < min_depth < max_depth, got "
                       f"{min_depth}, {max_depth}.")
    self.image_size = int(image_size)
    self.fov = float(fov)
    self.min_depth = float(min_depth)
    self.max_depth = float(max_depth)
    self.rot_center_depth = float((min_depth + max_depth) / 2.0
                                  if rot_center_depth is None
                                  else rot_center_depth)
    self.candidate_chunk = int(candidate_chunk)
    f = camera.focal_length(self.image_size, self.fov)
    c = (self.image_size - 1) / 2.0
    self.focal = (f, f)
    self.principal_point = (c, c)
    self.faces = rasterizer.grid_faces(self.image_size, self.image_size)
    # Depth values outside the range the model can produce are clamped.
    self.margin = (self.max_depth - self.min_depth) / 2.0
    self.far_depth = self.max_depth + self.margin

  def coverage_mask(self, recon_depth):
    """`[B, S, S]` float {0, 1}: 1 where a warped depth map shows a surface.

    `warp_canon_depth` writes `far_depth` where no triangle covers a pixel.
    """
    return tf.cast(recon_depth < self.far_depth, tf.float32)

  def _check_depth(self, depth):
    depth = tf.convert_to_tensor(depth, tf.float32)
    s = self.image_size
    shapes.check_shape(depth, "depth", ("B", s, s))
    return depth

  def depth_to_points(self, depth):
    """Lifts `[B, S, S]` depth to `[B, S, S, 3]` camera-space points."""
    return camera.lift(self._check_depth(depth), self.focal,
                       self.principal_point)

  def normals_from_depth(self, depth):
    """`[B, S, S, 3]` unit normals of a `[B, S, S]` depth map (away from camera)."""
    with tf.name_scope("normals_from_depth"):
      return shading.normals_from_points(self.depth_to_points(depth))

  def view_directions(self, depth):
    """`[B, S, S, 3]` unit vectors from each lifted pixel to the camera."""
    points = self.depth_to_points(depth)
    return -points / tf.norm(points, axis=-1, keepdims=True)

  def warp_canon_depth(self, depth, view, differentiable=True):
    """Renders canonical depth seen from `view`, in the input view.

    The canonical depth becomes a grid mesh (two triangles per pixel quad),
    is warped by the view and rasterised (nearest surface wins). The result
    is clamped to [min_depth - m, max_depth + m], m = (max - min) / 2; the
    background ends at max_depth + m.

    Args:
      depth: `[B, S, S]` canonical depth in scene units.
      view: `[B, 6]` view vectors.
      differentiable: False for a depth without gradient, computed without
        the barycentrics (`rasterizer.rasterize_depth`).

    Returns:
      `[B, S, S]` depth in the input view.
    """
    with tf.name_scope("warp_canon_depth"):
      depth = self._check_depth(depth)
      s = self.image_size
      points = tf.reshape(self.depth_to_points(depth), [-1, s * s, 3])
      points = transforms.warp_points(points, view, self.rot_center_depth)
      warped, _ = rasterizer.rasterize_depth(
          points, self.faces, self.focal, self.principal_point, s, s,
          background_depth=self.far_depth,
          candidate_chunk=self.candidate_chunk, differentiable=differentiable,
          grid=(s, s))
      return tf.clip_by_value(warped, self.min_depth - self.margin,
                              self.far_depth)

  def inverse_warp_grid(self, recon_depth, view):
    """Where each input-view pixel comes from in the canonical image.

    Back-projects every pixel with `recon_depth`, applies the inverse view
    warp, projects with K and normalises with u / (S - 1) * 2 - 1.

    Args:
      recon_depth: `[B, S, S]` depth in the input view.
      view: `[B, 6]` view vectors.

    Returns:
      `[B, S, S, 2]` (x, y) sampling grid in [-1, 1] (outside = off image).
    """
    with tf.name_scope("inverse_warp_grid"):
      s = self.image_size
      points = tf.reshape(self.depth_to_points(recon_depth), [-1, s * s, 3])
      points = transforms.inverse_warp_points(points, view,
                                              self.rot_center_depth)
      pixels = camera.project(points, self.focal, self.principal_point)
      grid = pixels / (s - 1) * 2.0 - 1.0
      return tf.reshape(grid, [-1, s, s, 2])

  def render_view(self, image, depth, view, differentiable=True):
    """Renders a canonical textured depth map seen from `view`.

    Args:
      image: `[B, S, S, C]` canonical texture.
      depth: `[B, S, S]` canonical depth.
      view: `[B, 6]` view vectors.
      differentiable: False when no gradient need reach `depth` or `view`
        (`warp_canon_depth`); the texture's still does.

    Returns:
      image: `[B, S, S, C]`, zero where the surface does not cover a pixel.
      depth: `[B, S, S]` depth in the view (far value as background).
      mask: `[B, S, S]` float, 1 where a surface is visible.
    """
    with tf.name_scope("render_view"):
      recon_depth = self.warp_canon_depth(depth, view, differentiable)
      grid = self.inverse_warp_grid(recon_depth, view)
      mask = tf.cast(self.coverage_mask(recon_depth), image.dtype)
      rendered = sampling.bilinear_sample(image, grid) * mask[..., None]
      return rendered, recon_depth, mask

  def render_yaw(self, image, depth, angles):
    """Turntable: the textured depth mesh rotated about the vertical axis.

    Args:
      image: `[B, S, S, C]` canonical texture (any value range).
      depth: `[B, S, S]` canonical depth.
      angles: `[T]` yaw angles in radians (rotation about y through the
        rotation centre).

    Returns:
      `[B, T, S, S, C]` frames, zero where no surface is visible.
    """
    with tf.name_scope("render_yaw"):
      image = tf.convert_to_tensor(image, tf.float32)
      depth = self._check_depth(depth)
      angles = tf.reshape(tf.convert_to_tensor(angles, tf.float32), [-1])
      batch, frames = tf.shape(depth)[0], tf.shape(angles)[0]
      s = self.image_size
      # Every (image, angle) pair becomes one batch entry of a single pass.
      yaw = tf.reshape(tf.tile(angles[None, :], [batch, 1]), [-1])
      zeros = tf.zeros_like(yaw)
      view = tf.stack([zeros, yaw, zeros, zeros, zeros, zeros], axis=-1)
      tiled_image = tf.repeat(image, frames, axis=0)
      tiled_depth = tf.repeat(depth, frames, axis=0)
      rendered, _, _ = self.render_view(tiled_image, tiled_depth, view)
      return tf.reshape(rendered, tf.concat(
          [[batch, frames, s, s], tf.shape(image)[-1:]], axis=0))
