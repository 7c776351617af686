"""TensorBoard pictures of the factors, the symmetry axis and a turntable."""


import numpy as np
from tensorboard.plugins.image import metadata as image_metadata
import tensorflow as tf

from tf_unsup3d import visualization
from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import transforms


def symmetry_axis_pixels(renderer, canon_depth, view):
  """Where the canonical symmetry plane (x = 0) lands in the input image.

  Lifts the centre column of each canonical depth map, warps it by the view
  and projects it: `[B, S, 2]` (u, v) pixel positions.
  """
  s = renderer.image_size
  points = renderer.depth_to_points(canon_depth)
  column = points[:, :, (s - 1) // 2:(s - 1) // 2 + 2].numpy().mean(axis=2)
  column[..., 0] = 0.0  # exactly on the plane for even sizes
  warped = transforms.warp_points(tf.constant(column, tf.float32), view,
                                  renderer.rot_center_depth)
  return camera.project(warped, renderer.focal, renderer.principal_point)


def draw_points(images, pixels, color=(1.0, 0.0, 0.0)):
  """Paints `[B, N, 2]` (u, v) positions onto `[B, H, W, 3]` images (NumPy)."""
  images = np.array(images, np.float32)
  height, width = images.shape[1:3]
  for b, points in enumerate(np.asarray(pixels)):
    for u, v in np.round(points).astype(int):
      if 0 <= u < width and 0 <= v < height:
        images[b, v, u] = color
  return images


def factor_grid(model, predict, images):
  """One row per image: input + symmetry axis, albedo, canonical image,
  reconstruction, flipped reconstruction, canonical and reconstructed depth,
  normals, shading and the two photometric confidence maps. uint8 image."""
  out = predict(images)
  r = model.renderer
  axis = symmetry_axis_pixels(r, out["canon_depth"], out["view"])
  columns = [
      draw_points(images, axis), out["canon_albedo"], out["canon_image"],
      out["recon_image"], out["recon_image_flip"],
      visualization.depth_to_rgb(out["canon_depth"], r.min_depth, r.max_depth),
      visualization.depth_to_rgb(out["recon_depth"], r.min_depth, r.max_depth),
      visualization.normal_to_rgb(out["canon_normal"]),
      visualization.gray_to_rgb(out["canon_diffuse_shading"])]
  if "conf_sigma_l1" in out:
    # Confidence 1 / sigma, shown relative to each map's range.
    for k in range(2):
      confidence = 1.0 / out["conf_sigma_l1"][..., k]
      columns.append(visualization.gray_to_rgb(
          confidence, float(tf.reduce_min(confidence)),
          float(tf.reduce_max(confidence)) + 1e-6))
  return visualization.image_grid([np.asarray(c) for c in columns]), out


def turntable(model, outputs, num_frames=9, max_angle=60.0):
  """Frames `[B, T, S, S, 3]` of the shaded canonical mesh turning in yaw."""
  angles = np.radians(np.linspace(-max_angle, max_angle, num_frames))
  return model.renderer.render_yaw(outputs["canon_image"],
                                   outputs["canon_depth"], angles)


def turntable_gif(frames, pad=2):
  """`[B, T, S, S, 3]` frames in [0, 1] -> GIF bytes, width, height.

  One animation with the B turntables side by side.
  """
  frames = np.asarray(frames)
  # One grid row per frame: the B images are its columns.
  rows = np.stack([visualization.image_grid([f[None] for f in frames[:, t]], pad)
                   for t in range(frames.shape[1])])
  height, width = rows.shape[1:3]
  return visualization.encode_gif(rows / 255.0, frame_ms=120), width, height


def write_images(writer, model, predict, images, step):
  """Factor grid and an animated turntable GIF for a few fixed images.

  `predict` is a compiled `model(x, training=False)`. TensorBoard's image
  dashboard shows the GIF animated (it displays the encoded file as is).
  """
  grid, outputs = factor_grid(model, predict, images)
  frames = turntable(model, outputs).numpy()[:4]
  # Forward then back again, so the loop does not jump.
  frames = np.concatenate([frames, frames[:, -2:0:-1]], axis=1)
  gif, width, height = turntable_gif(np.clip(frames, 0.0, 1.0))
  with writer.as_default(step=step):
    tf.summary.image("factors", grid[None], step=step)
    tf.summary.write(
        "turntable", tf.constant([str(width), str(height), gif]), step=step,
        metadata=image_metadata.create_summary_metadata(
            display_name="turntable", description="Shaded canonical mesh, "
            "yaw -60 to 60 degrees."))
  return grid


