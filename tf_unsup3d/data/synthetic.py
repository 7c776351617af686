r"""Procedural symmetric faces with ground-truth depth: the embedded dataset.

    python -m tf_unsup3d.data.synthetic --output_dir=data/synthetic \
        --num_train=10000 --num_val=256 --num_test=512 --image_size=64 --seed=0

Each instance is a face-like height field in its canonical (frontal) frame:
an ellipsoidal cap plus mirrored smooth bumps (nose, brows, cheeks, chin,
eye sockets) with random sizes, a mirror-symmetric albedo with a few small
one-sided spots, seen from a random view (yaw up to --max_yaw, smaller pitch
and roll, small translation) under random Lambertian light over a smooth
background. Rendering is a NumPy ray caster, independent of the model's
TensorFlow renderer, with DESIGN's camera and view conventions.

Layout (DESIGN section 6): <split>/image/<i>_image.png (RGB) and
<split>/depth/<i>_depth.png (16-bit; g = 1 - (d - min) / (max - min), the
background at max depth). Each split is written to <split>.partial/ and
renamed when complete; splits are seeded separately so their contents do
not depend on the other splits' sizes.
"""

import math
import os
import shutil
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tf_unsup3d import atomic_files

MIN_DEPTH, MAX_DEPTH = 0.9, 1.1
FOV = 10.0
ROT_CENTER_DEPTH = 1.0
# The face's rim, canonical frame: at the rotation centre, the face in front
# of it. The model's depth is tanh of a zero-mean map, so a face in front of
# the centre needs its (unseen) surround behind; with the rim behind the
# centre (1.05, as before), the surround had to come in front of the face,
# and the model learnt yaw with the wrong sign (README, learning benchmark).
BASE_DEPTH = ROT_CENTER_DEPTH
SPLITS = ("train", "val", "test")


def _rotation(rx, ry, rz):
  """R = Rz Ry Rx."""
  cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry),
                            math.sin(ry), math.cos(rz), math.sin(rz))
  r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return r_z @ r_y @ r_x


def encode_depth(depth, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
  """Depth `[H, W]` in scene units -> uint16 PNG values (DESIGN section 6)."""
  g = 1.0 - (np.asarray(depth, np.float64) - min_depth) / (max_depth - min_depth)
  return np.round(np.clip(g, 0.0, 1.0) * 65535).astype(np.uint16)


def decode_depth(values, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
  """uint16 PNG values `[H, W]` -> depth in scene units."""
  g = np.asarray(values, np.float64) / 65535.0
  g = (1.0 - g) * 2.0 - 1.0
  return min_depth + (g + 1.0) / 2.0 * (max_depth - min_depth)


def _gauss(x, y, cx, cy, sx, sy):
  return np.exp(-((x - cx) / sx) ** 2 - ((y - cy) / sy) ** 2)


def sample_instance(rng):
  """Random shape and albedo parameters of one face (a dict of floats)."""
  u = rng.uniform
  return {
      "a": u(0.55, 0.75), "b": u(0.7, 0.9), "cap": u(0.04, 0.065),
      "nose": u(0.015, 0.035), "nose_y": u(-0.05, 0.15), "nose_w": u(0.08, 0.14),
      "brow": u(0.0, 0.015), "brow_x": u(0.2, 0.35), "brow_y": u(-0.4, -0.25),
      "eye": u(0.005, 0.02), "eye_x": u(0.2, 0.35), "eye_y": u(-0.25, -0.1),
      "cheek": u(0.0, 0.015), "cheek_x": u(0.3, 0.45), "cheek_y": u(0.1, 0.3),
      "chin": u(0.0, 0.02), "chin_y": u(0.55, 0.7),
      "skin": u(0.35, 0.95, 3), "lip": u(0.3, 0.8, 3),
      "background": u(0.0, 1.0, (2, 3)),
      "spots": [(u(0.05, 0.5), u(-0.5, 0.5), u(0.03, 0.08), u(-0.3, 0.3))
                for _ in range(rng.integers(1, 4))],
  }


def canonical_maps(params, image_size):
  """Canonical depth `[S, S]`, albedo `[S, S, 3]` and face mask `[S, S]`.

  Coordinates x, y in [-1, 1] across the canonical image; the depth is
  mirror-symmetric in x, the albedo too apart from the one-sided spots.
  """
  p = params
  y, x = np.mgrid[0:image_size, 0:image_size] / (image_size - 1) * 2 - 1
  ax = np.abs(x)  # mirrored features use |x|
  r2 = (x / p["a"]) ** 2 + (y / p["b"]) ** 2
  inside = r2 < 1.0
  window = np.clip(1 - r2, 0, 1) ** 2
  height = p["cap"] * np.clip(1 - r2, 0, 1) ** 1.5
  height += p["nose"] * _gauss(x, y, 0, p["nose_y"], p["nose_w"], 0.3)
  height += p["brow"] * _gauss(ax, y, p["brow_x"], p["brow_y"], 0.15, 0.06)
  height -= p["eye"] * _gauss(ax, y, p["eye_x"], p["eye_y"], 0.12, 0.08)
  height += p["cheek"] * _gauss(ax, y, p["cheek_x"], p["cheek_y"], 0.15, 0.15)
  height += p["chin"] * _gauss(x, y, 0, p["chin_y"], 0.2, 0.1)
  depth = BASE_DEPTH - height * window
  shade = np.ones_like(x)
  shade -= 0.6 * _gauss(ax, y, p["eye_x"], p["eye_y"], 0.07, 0.04)
  shade -= 0.4 * _gauss(ax, y, p["brow_x"], p["brow_y"] - 0.05, 0.13, 0.025)
  albedo = shade[..., None] * p["skin"]
  lips = _gauss(x, y, 0, 0.4, 0.18, 0.05)[..., None]
  albedo = albedo * (1 - lips) + lips * p["lip"]
  for sx, sy, size, tone in p["spots"]:  # one-sided details
    albedo = albedo * (1 + tone * _gauss(x, y, sx, sy, size, size)[..., None])
  return depth, np.clip(albedo, 0, 1), inside


def _bilinear(grid, u, v):
  """Samples `[S, S, ...]` at float pixel coordinates (clamped to the edge)."""
  s = grid.shape[0]
  u = np.clip(u, 0, s - 1)
  v = np.clip(v, 0, s - 1)
  u0 = np.minimum(np.floor(u).astype(int), s - 2)
  v0 = np.minimum(np.floor(v).astype(int), s - 2)
  fu, fv = u - u0, v - v0
  if grid.ndim == 3:
    fu, fv = fu[..., None], fv[..., None]
  return ((1 - fv) * ((1 - fu) * grid[v0, u0] + fu * grid[v0, u0 + 1]) +
          fv * ((1 - fu) * grid[v0 + 1, u0] + fu * grid[v0 + 1, u0 + 1]))


def render_instance(params, view, light, image_size, steps=48):
  """Ray-casts one instance seen from `view` under `light`.

  Args:
    params: from `sample_instance` (or hand-made, same keys).
    view: (rx, ry, rz, tx, ty, tz), radians and scene units.
    light: (ambient, diffuse, dx, dy); direction normalise(dx, dy, 1).
    image_size: S.
    steps: ray-march samples between depth 0.8 and 1.25 before bisection.

  Returns:
    image `[S, S, 3]` in [0, 1] and depth `[S, S]` (MAX_DEPTH background).
  """
  s = image_size
  f = (s - 1) / 2 / math.tan(math.radians(FOV) / 2)
  c = (s - 1) / 2
  canon_depth, albedo, inside = canonical_maps(params, s)
  # Canonical normals (DESIGN: central differences of the lifted grid).
  v, u = np.mgrid[0:s, 0:s].astype(np.float64)
  rays_c = np.stack([(u - c) / f, (v - c) / f, np.ones_like(u)], -1)
  points = canon_depth[..., None] * rays_c
  normal = np.zeros_like(points)
  normal[1:-1, 1:-1] = np.cross(points[1:-1, 2:] - points[1:-1, :-2],
                                points[2:, 1:-1] - points[:-2, 1:-1])
  normal[0, :] = normal[-1, :] = normal[:, 0] = normal[:, -1] = (0, 0, 1)
  rot = _rotation(*view[:3])
  center = np.array([0.0, 0.0, ROT_CENTER_DEPTH])
  shift = np.asarray(view[3:], np.float64)
  rays = rays_c.reshape(-1, 3)

  def residual(t):
    """Canonical z minus surface depth at the canonical projection (>= 0: hit)."""
    p = (t[..., None] * rays[:, None, :] if t.ndim == 2 else
         t[:, None] * rays) - shift - center
    p = p @ rot + center  # R^T applied to row vectors
    uc = f * p[..., 0] / p[..., 2] + c
    vc = f * p[..., 1] / p[..., 2] + c
    on_image = (uc >= 0) & (uc <= s - 1) & (vc >= 0) & (vc <= s - 1)
    surface = _bilinear(canon_depth, uc, vc)
    return np.where(on_image, p[..., 2] - surface, -1.0), uc, vc

  ts = np.linspace(0.8, 1.25, steps)
  values, _, _ = residual(np.broadcast_to(ts, (rays.shape[0], steps)))
  crossing = (values[:, 1:] >= 0) & (values[:, :-1] < 0)
  hit = crossing.any(axis=1)
  first = np.argmax(crossing, axis=1)
  low, high = ts[first], ts[first + 1]
  for _ in range(24):  # bisection: 0.45 / 48 / 2^24 ~ 6e-10
    mid = (low + high) / 2
    r, _, _ = residual(mid)
    low, high = np.where(r < 0, mid, low), np.where(r < 0, high, mid)
  t = (low + high) / 2
  _, uc, vc = residual(t)
  face = hit & (_bilinear(inside.astype(np.float64), uc, vc) > 0.5)

  n = _bilinear(normal, uc, vc) @ rot.T
  n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
  ambient, diffuse, dx, dy = light
  l_dir = np.array([dx, dy, 1.0]) / math.sqrt(dx * dx + dy * dy + 1.0)
  shading = ambient + diffuse * np.maximum(0.0, n @ l_dir)
  colour = _bilinear(albedo, uc, vc) * shading[:, None]
  gy = (v.reshape(-1) / (s - 1))[:, None]
  bg = params["background"]
  background = bg[0] * (1 - gy) + bg[1] * gy
  image = np.where(face[:, None], colour, background)
  depth = np.where(face, np.minimum(t, MAX_DEPTH - 1e-4), MAX_DEPTH)
  return (np.clip(image, 0, 1).reshape(s, s, 3).astype(np.float32),
          depth.reshape(s, s))


def sample_pose_and_light(rng, max_yaw=30.0):
  """Random view (radians, scene units) and light (DESIGN conventions)."""
  view = (math.radians(rng.uniform(-10, 10)), math.radians(
      rng.uniform(-max_yaw, max_yaw)), math.radians(rng.uniform(-10, 10)),
          rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01),
          rng.uniform(-0.02, 0.02))
  light = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7),
           rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))
  return view, light


def generate(output_dir, num_train, num_val, num_test, image_size=64, seed=0,
             max_yaw=30.0, overwrite=False, progress=True):
  """Writes the dataset; returns the number of images per split."""
  counts = dict(zip(SPLITS, (num_train, num_val, num_test)))
  for split in SPLITS:
    if os.path.exists(os.path.join(output_dir, split)) and not overwrite:
      raise FileExistsError(
          f"{os.path.join(output_dir, split)} exists; pass overwrite=True "
          "(--overwrite) to replace it.")
  total, done, start = sum(counts.values()), 0, time.perf_counter()
  for index, split in enumerate(SPLITS):
    partial = os.path.join(output_dir, split + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for sub in ("image", "depth"):
      os.makedirs(os.path.join(partial, sub))
    rng = np.random.default_rng([seed, index])
    for i in range(counts[split]):
      params = sample_instance(rng)
      view, light = sample_pose_and_light(rng, max_yaw)
      image, depth = render_instance(params, view, light, image_size)
      png = tf.io.encode_png(np.round(image * 255).astype(np.uint8)).numpy()
      atomic_files.write_bytes(
          os.path.join(partial, "image", f"{i:06d}_image.png"), png)
      png = tf.io.encode_png(encode_depth(depth)[..., None]).numpy()
      atomic_files.write_bytes(
          os.path.join(partial, "depth", f"{i:06d}_depth.png"), png)
      done += 1
      if progress and (done % 50 == 0 or done == total):
        rate = done / (time.perf_counter() - start)
        sys.stderr.write(f"\rsynthetic data: {done}/{total} images "
                         f"({100 * done / total:.0f}%, {rate:.0f} img/s)")
        sys.stderr.flush()
    final = os.path.join(output_dir, split)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
  if progress:
    sys.stderr.write("\n")
  return counts


def define_flags():
  """Command-line flags of the generator CLI."""
  flags.DEFINE_string("output_dir", None, "Dataset root.")
  for split, default in zip(SPLITS, (10000, 256, 512)):
    flags.DEFINE_integer(f"num_{split}", default, f"Images in {split}.")
  flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_float("max_yaw", 30.0, "Largest |yaw| in degrees.")
  flags.DEFINE_boolean("overwrite", False, "Replace existing splits.")


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.output_dir:
    raise app.UsageError("--output_dir is required.")
  counts = generate(args.output_dir, args.num_train, args.num_val,
                    args.num_test, image_size=args.image_size, seed=args.seed,
                    max_yaw=args.max_yaw, overwrite=args.overwrite)
  print(f"Wrote {counts} to {args.output_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
