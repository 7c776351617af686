r"""Procedural symmetric faces with ground-truth depth: the embedded dataset.

    python -m tf_unsup3d.data.synthetic --output_dir=data/synthetic \
        --num_train=10000 --num_val=256 --num_test=512 --image_size=64 --seed=0
    python -m tf_unsup3d.data.synthetic --output_dir=data/synthetic_wild \
        --preset=wild [--num_workers=2]

Each instance is a face-like height field in its canonical (frontal) frame:
an ellipsoidal cap plus mirrored smooth bumps (nose, brows, cheeks, chin,
eye sockets) with random sizes, a mirror-symmetric albedo with a few small
one-sided spots, seen from a random view (yaw up to --max_yaw, pitch up to
--max_pitch, roll up to --max_roll, small translation) under random
Lambertian light over a smooth background. Rendering is a NumPy ray caster,
independent of the model's TensorFlow renderer, with DESIGN's camera and view
conventions.

Harder data, all off by default (the default keeps its distribution):
--background=texture (noisy multi-scale texture instead of the gradient),
--hair (probability of a hair cap: darker albedo and a little depth relief
above the hairline, with an off-centre parting, so not mirror-symmetric),
--painted (eyes with sclera, iris and pupil, dark brows, red lips: albedo
only), larger angle ranges; `WILD` / --preset=wild bundles them.

Layout (DESIGN section 6): <split>/image/<i>_image.png (RGB) and
<split>/depth/<i>_depth.png (16-bit grey in the `depth_png` convention: near
is bright, the background at max depth black), <split>/views.csv (the
ground-truth view and light of every image, `read_views`) and
<split>/generator.json (the settings, to recognise a complete split on a
re-run). Each split is written to <split>.partial/ and renamed when
complete. Every image is seeded from (seed, split index, image index) alone,
so the files do not depend on the number of workers nor on the other splits'
sizes, and an interrupted run resumes: complete splits are kept, a leftover
<split>.partial/ is finished.

Workers render and encode (NumPy and Pillow) and never call TensorFlow, so
forking a process that has TensorFlow loaded is safe.
"""

import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from tf_unsup3d import atomic_files
from tf_unsup3d.data import depth_png

MIN_DEPTH, MAX_DEPTH = 0.9, 1.1
FOV = 10.0
ROT_CENTER_DEPTH = 1.0
# The face's rim, canonical frame: at the rotation centre, the face in front
# of it. The model's depth is tanh of a zero-mean map, so a face in front of
# the centre needs its (unseen) surround behind; with the rim behind the
# centre (e.g. 1.05), the surround has to come in front of the face, and the
# model learns yaw with the wrong sign (README, learning benchmark).
BASE_DEPTH = ROT_CENTER_DEPTH
SPLITS = ("train", "val", "test")
BACKGROUNDS = ("gradient", "texture")
# Harder, more varied faces, to check a recipe on data it was not tuned to.
WILD = dict(background="texture", hair=0.5, painted=True, max_yaw=45.0,
            max_pitch=15.0)
PRESETS = {"wild": WILD}
VIEW_COLUMNS = ("index", "rx", "ry", "rz", "tx", "ty", "tz", "ambient",
                "diffuse", "dx", "dy")
VIEWS_FILE = "views.csv"
MANIFEST_FILE = "generator.json"
# Bump when the same settings would draw or render different files.
FORMAT = 2


def _rotation(rx, ry, rz):
  """R = Rz Ry Rx."""
  cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry),
                            math.sin(ry), math.cos(rz), math.sin(rz))
  r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return r_z @ r_y @ r_x


def object_frame_light(views):
  """The light of views.csv rows in the object's (canonical) frame.

  The generator lights each face in the camera frame (`render_instance`);
  the model predicts its light in the canonical frame, where the object is
  frontal. The same light there is R^T l, so on a turned face it carries
  part of the turn.

  Args:
    views: `read_views`-like dict of `[N]` arrays "rx", "ry", "rz"
      (radians), "dx", "dy".

  Returns:
    (dx, dy): `[N]` arrays, the direction normalise(dx, dy, 1) in the
    object's frame.
  """
  dx, dy = [], []
  for rx, ry, rz, lx, ly in zip(views["rx"], views["ry"], views["rz"],
                                views["dx"], views["dy"]):
    # Camera-frame normals are R n: n_cam . l = n . (R^T l).
    lc = _rotation(rx, ry, rz).T @ np.array([lx, ly, 1.0])
    dx.append(lc[0] / lc[2])
    dy.append(lc[1] / lc[2])
  return np.array(dx), np.array(dy)


def encode_png(values):
  """PNG bytes (Pillow) of uint8 `[H, W, 3]` (RGB) or uint16 `[H, W]`.

  uint16 values become a 16-bit greyscale PNG (Pillow mode "I;16"), which
  `tf.io.decode_png(..., dtype=tf.uint16)` reads back unchanged.
  """
  values = np.asarray(values)
  if values.dtype == np.uint16 and values.ndim == 2:
    values = np.ascontiguousarray(values, "<u2")  # Pillow's "I;16"
  elif not (values.dtype == np.uint8 and values.ndim == 3 and
            values.shape[-1] == 3):
    raise ValueError(f"Expected uint8 [H, W, 3] or uint16 [H, W], got "
                     f"{values.dtype} {values.shape}.")
  buffer = io.BytesIO()
  Image.fromarray(values).save(buffer, format="PNG")
  return buffer.getvalue()


def _gauss(x, y, cx, cy, sx, sy):
  return np.exp(-((x - cx) / sx) ** 2 - ((y - cy) / sy) ** 2)


def _step(z):
  """Smooth step from 0 (z << 0) to 1 (z >> 0), 0.5 at 0."""
  return 0.5 + 0.5 * np.tanh(z)


def sample_instance(rng):
  """Random shape and albedo parameters of one face (a dict of floats)."""
  u = rng.uniform
  return {
      "a": u(0.55, 0.75), "b": u(0.7, 0.9), "cap": u(0.04, 0.065),
      "nose": u(0.015, 0.035), "nose_y": u(-0.05, 0.15),
      "nose_w": u(0.08, 0.14),
      "brow": u(0.0, 0.015), "brow_x": u(0.2, 0.35), "brow_y": u(-0.4, -0.25),
      "eye": u(0.005, 0.02), "eye_x": u(0.2, 0.35), "eye_y": u(-0.25, -0.1),
      "cheek": u(0.0, 0.015), "cheek_x": u(0.3, 0.45), "cheek_y": u(0.1, 0.3),
      "chin": u(0.0, 0.02), "chin_y": u(0.55, 0.7),
      "skin": u(0.35, 0.95, 3), "lip": u(0.3, 0.8, 3),
      "background": u(0.0, 1.0, (2, 3)),
      "spots": [(u(0.05, 0.5), u(-0.5, 0.5), u(0.03, 0.08), u(-0.3, 0.3))
                for _ in range(rng.integers(1, 4))],
  }


def sample_extras(rng):
  """Parameters of the optional features (a dict; always the same draws).

  Returns:
    {"hair_draw": uniform [0, 1) (hair when below the hair probability),
     "texture": background texture, "hair": hair cap, "paint": painted
     eyes, brows and lips}; `sample_scene` adds the enabled ones to the
    instance under the keys "texture", "hair" and "paint".
  """
  u = rng.uniform
  hair_draw = u()
  texture = {
      "colours": u(0.0, 1.0, (3, 3)),
      # Smoothed noise: Gaussian values on coarse grids, bilinear between.
      "grids": [rng.normal(size=(n + 1, n + 1)) for n in (2, 5, 11)],
      "weights": (1.0, 0.7, 0.5),
      # Plane waves: cycles per image, orientation, phase.
      "waves": np.stack([u(2.0, 10.0, 4), u(0.0, math.pi, 4),
                         u(0.0, 2 * math.pi, 4)], -1),
      "noise": u(0.02, 0.08),  # per-pixel noise std
      "noise_seed": int(rng.integers(2 ** 32)),
  }
  side = 1.0 if u() < 0.5 else -1.0
  tone = u(0.04, 0.3)
  hair = {
      "line": u(0.15, 0.5),  # hairline at the middle, 0 (y=-0.5) .. 1 (top)
      "bend": u(0.05, 0.2),  # how far it comes down at the sides
      "part": side * u(0.08, 0.3), "part_w": u(0.015, 0.03),
      "sweep": u(0.0, 0.08),  # the fringe a little lower away from the part
      "thick": u(0.01, 0.02),  # depth relief (times the rim window)
      "colour": tone * np.array([1.0, u(0.55, 0.9), u(0.3, 0.7)]),
      "streaks": u(4.0, 8.0), "streak_phase": u(0.0, 2 * math.pi),
  }
  paint = {
      "eye_scale": u(0.85, 1.15), "sclera": u(0.8, 0.95, 3),
      "iris": u(0.035, 0.05), "iris_colour": u(0.05, 0.6, 3),
      "brow_colour": u(0.03, 0.25) * np.array([1.0, u(0.6, 0.9),
                                                u(0.4, 0.7)]),
      "brow_arch": u(0.0, 0.04), "brow_thick": u(0.02, 0.035),
      "lip_colour": np.array([u(0.5, 0.85), u(0.05, 0.25), u(0.1, 0.3)]),
      "lip_w": u(0.12, 0.18), "lip_h": u(0.035, 0.05),
  }
  return {"hair_draw": hair_draw, "texture": texture, "hair": hair,
          "paint": paint}


def _hair_cover(params, x, y):
  """Hair cover in [0, 1] on the canonical grid (1 above the hairline)."""
  p, h = params, params["hair"]
  line = -0.5 - h["line"] * (p["b"] - 0.5) + h["bend"] * (x / p["a"]) ** 2
  line = line + h["sweep"] * _step(-np.sign(h["part"]) * (x - h["part"]) / 0.1)
  return _step((line - y) / 0.02)


def canonical_maps(params, image_size):
  """Canonical depth `[S, S]`, albedo `[S, S, 3]` and face mask `[S, S]`.

  Coordinates x, y in [-1, 1] across the canonical image; the depth is
  mirror-symmetric in x, the albedo too apart from the one-sided spots.
  Optional keys (`sample_extras`): "paint" changes the albedo only, around
  the eyes, brows and lips, and keeps it symmetric; "hair" changes albedo
  and depth (at most "thick" nearer) only above the hairline, y < -0.2,
  and is not symmetric (its parting is off-centre). Depth stays in
  [BASE_DEPTH - 0.1, BASE_DEPTH + 0.02], albedo in [0, 1].
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
  hair = p.get("hair")
  if hair is not None:
    cover = _hair_cover(p, x, y)
    parting = np.exp(-((x - hair["part"]) / hair["part_w"]) ** 2)
    height = height + hair["thick"] * cover * (1 - 0.7 * parting)
  depth = BASE_DEPTH - height * window
  shade = np.ones_like(x)
  shade -= 0.6 * _gauss(ax, y, p["eye_x"], p["eye_y"], 0.07, 0.04)
  shade -= 0.4 * _gauss(ax, y, p["brow_x"], p["brow_y"] - 0.05, 0.13, 0.025)
  albedo = shade[..., None] * p["skin"]
  lips = _gauss(x, y, 0, 0.4, 0.18, 0.05)[..., None]
  albedo = albedo * (1 - lips) + lips * p["lip"]
  if p.get("paint") is not None:
    albedo = _paint(albedo, p, ax, x, y, pixel=2 / (image_size - 1))
  for sx, sy, size, tone in p["spots"]:  # one-sided details
    albedo = albedo * (1 + tone * _gauss(x, y, sx, sy, size, size)[..., None])
  if hair is not None:
    streaks = 1 + 0.15 * np.sin(2 * math.pi * hair["streaks"] *
                                 (x - hair["part"]) + hair["streak_phase"])
    mask = (cover * (1 - parting))[..., None]
    albedo = albedo * (1 - mask) + mask * hair["colour"] * streaks[..., None]
  return depth, np.clip(albedo, 0, 1), inside


def _paint(albedo, params, ax, x, y, pixel):
  """Painted eyes (sclera, iris, pupil), brows and lips over `albedo`."""
  p, q = params, params["paint"]

  def mix(base, colour, mask):
    mask = np.clip(mask, 0, 1)[..., None]
    return base * (1 - mask) + mask * colour

  def disc(distance, radius):  # antialiased over one canonical pixel
    return np.clip((radius - distance) / pixel + 0.5, 0, 1)

  ex, ey = ax - p["eye_x"], y - p["eye_y"]
  sw, sh = 0.09 * q["eye_scale"], 0.045 * q["eye_scale"]
  sclera = disc(np.hypot(ex / sw, ey / sh) * sh, sh)
  albedo = mix(albedo, q["sclera"], sclera)
  albedo = mix(albedo, q["iris_colour"], sclera * disc(np.hypot(ex, ey),
                                                        q["iris"]))
  albedo = mix(albedo, 0.03, sclera * disc(np.hypot(ex, ey),
                                           0.45 * q["iris"]))
  brow_y = (p["brow_y"] - 0.05 +
            q["brow_arch"] * ((ax - p["brow_x"]) / 0.13) ** 2)
  brow = 1.6 * (np.exp(-((ax - p["brow_x"]) / 0.14) ** 4) *
                np.exp(-((y - brow_y) / q["brow_thick"]) ** 2))
  albedo = mix(albedo, q["brow_colour"], brow)
  lips = 1.5 * _gauss(x, y, 0, 0.4, q["lip_w"], q["lip_h"])
  albedo = mix(albedo, q["lip_colour"], lips)
  mouth = 0.8 * _gauss(x, y, 0, 0.4, 0.8 * q["lip_w"], 0.008)
  return mix(albedo, 0.05, mouth)


def background_image(params, image_size):
  """Background `[S, S, 3]` in [0, 1]: a vertical gradient between the two
  "background" colours or, with a "texture" (`sample_extras`), a mix of
  three random colours by smoothed noise at three scales and four plane
  waves, plus per-pixel Gaussian noise."""
  s = image_size
  v, u = np.mgrid[0:s, 0:s] / (s - 1)
  texture = params.get("texture")
  if texture is None:
    bg = params["background"]
    gy = v[..., None]
    return bg[0] * (1 - gy) + bg[1] * gy
  noise = sum(w * _bilinear(g, u * (len(g) - 1), v * (len(g) - 1))
              for g, w in zip(texture["grids"], texture["weights"]))
  waves = sum(np.sin(2 * math.pi * k * (u * math.cos(a) + v * math.sin(a)) + ph)
              for k, a, ph in texture["waves"]) / 2
  c0, c1, c2 = texture["colours"]
  t1, t2 = _step(noise)[..., None], 0.6 * _step(waves)[..., None]
  image = (c0 * (1 - t1) + c1 * t1) * (1 - t2) + c2 * t2
  pixel_noise = np.random.default_rng(texture["noise_seed"]).normal(
      size=(s, s, 3))
  return np.clip(image + texture["noise"] * pixel_noise, 0, 1)


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
    params: from `sample_instance` (or hand-made, same keys), optionally
      with the "texture", "hair" and "paint" entries of `sample_extras`.
    view: (rx, ry, rz, tx, ty, tz), radians and scene units.
    light: (ambient, diffuse, dx, dy); direction normalise(dx, dy, 1).
    image_size: S.
    steps: ray-march samples between depth 0.8 and 1.25 before bisection.

  Returns:
    image `[S, S, 3]` float32 in [0, 1] and depth `[S, S]` float64 in
    [MIN_DEPTH, MAX_DEPTH] (MAX_DEPTH on the background).
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
    """Canonical z minus surface depth at the canonical projection (>= 0:
    hit)."""
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
  background = background_image(params, s).reshape(-1, 3)
  image = np.where(face[:, None], colour, background)
  depth = np.where(face, np.minimum(t, MAX_DEPTH - 1e-4), MAX_DEPTH)
  return (np.clip(image, 0, 1).reshape(s, s, 3).astype(np.float32),
          depth.reshape(s, s))


def sample_pose_and_light(rng, max_yaw=30.0, max_pitch=10.0, max_roll=10.0):
  """Random view (radians, scene units) and light (DESIGN conventions).

  Returns:
    view (rx, ry, rz, tx, ty, tz): |rx| <= max_pitch, |ry| <= max_yaw,
      |rz| <= max_roll (degrees, returned in radians), |tx|, |ty| <= 0.01,
      |tz| <= 0.02; light (ambient, diffuse, dx, dy): ambient and diffuse
      in [0.3, 0.7], dx, dy in [-0.5, 0.5].
  """
  view = (math.radians(rng.uniform(-max_pitch, max_pitch)),
          math.radians(rng.uniform(-max_yaw, max_yaw)),
          math.radians(rng.uniform(-max_roll, max_roll)),
          rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01),
          rng.uniform(-0.02, 0.02))
  light = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7),
           rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))
  return view, light


def sample_scene(seed, split_index, index, max_yaw=30.0, max_pitch=10.0,
                 max_roll=10.0, background="gradient", hair=0.0,
                 painted=False):
  """(params, view, light) of image `index` of split `split_index`.

  Seeded from (seed, split_index, index) alone. The face, view and light
  come from one stream, the optional features from a child stream, so the
  options change neither the face nor the light (the angle ranges scale
  the same draws).
  """
  sequence = np.random.SeedSequence([seed, split_index, index])
  rng = np.random.default_rng(sequence)
  params = sample_instance(rng)
  view, light = sample_pose_and_light(rng, max_yaw, max_pitch, max_roll)
  extras = sample_extras(np.random.default_rng(sequence.spawn(1)[0]))
  if background == "texture":
    params["texture"] = extras["texture"]
  if extras["hair_draw"] < hair:
    params["hair"] = extras["hair"]
  if painted:
    params["paint"] = extras["paint"]
  return params, view, light


def _paths(directory, index):
  return (os.path.join(directory, "image", f"{index:06d}_image.png"),
          os.path.join(directory, "depth", f"{index:06d}_depth.png"))


def _render_task(task):
  """Renders and writes one image pair; returns (index, view + light)."""
  directory, split_index, index, seed, image_size, options = task
  params, view, light = sample_scene(seed, split_index, index, **options)
  image, depth = render_instance(params, view, light, image_size)
  image_path, depth_path = _paths(directory, index)
  atomic_files.write_bytes(
      image_path, encode_png(np.round(image * 255).astype(np.uint8)))
  atomic_files.write_bytes(depth_path, encode_png(
      depth_png.encode(depth, MIN_DEPTH, MAX_DEPTH)))
  return index, tuple(view) + tuple(light)


def _make_pool(num_workers, start_method):
  """A process pool; None: "fork" on Linux, else the platform's default."""
  if start_method is None and sys.platform.startswith("linux"):
    start_method = "fork"
  return multiprocessing.get_context(start_method).Pool(num_workers)


def write_views(split_dir, rows):
  """Writes `<split_dir>/views.csv` (atomically) from `[N, 10]` rows of
  (rx, ry, rz, tx, ty, tz, ambient, diffuse, dx, dy), image i in row i."""
  lines = [",".join(VIEW_COLUMNS)]
  for index, row in enumerate(rows):
    lines.append(",".join([str(index)] + [repr(float(v)) for v in row]))
  atomic_files.write_bytes(os.path.join(split_dir, VIEWS_FILE),
                           ("\n".join(lines) + "\n").encode())


def read_views(split_dir):
  """The ground truth of `<split_dir>/views.csv`, or None if absent.

  Returns:
    {"index": int64 `[N]`, and float64 `[N]` arrays "rx", "ry", "rz"
    (radians; pitch, yaw, roll, R = Rz Ry Rx), "tx", "ty", "tz" (scene
    units), "ambient", "diffuse", "dx", "dy" (light direction
    normalise(dx, dy, 1))}, in index order.
  """
  path = os.path.join(split_dir, VIEWS_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader)
    if tuple(header) != VIEW_COLUMNS:
      raise ValueError(f"{path}: unexpected header {header}.")
    rows = [row for row in reader if row]
  columns = list(zip(*rows)) if rows else [()] * len(VIEW_COLUMNS)
  return {name: np.array(values, np.int64 if name == "index" else np.float64)
          for name, values in zip(VIEW_COLUMNS, columns)}


def _read_manifest(split_dir):
  try:
    with open(os.path.join(split_dir, MANIFEST_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_complete(split_dir, manifest):
  """Whether `split_dir` holds this generation's complete split."""
  if (_read_manifest(split_dir) != manifest or
      not os.path.isfile(os.path.join(split_dir, VIEWS_FILE))):
    return False
  for sub, suffix in (("image", "_image.png"), ("depth", "_depth.png")):
    expected = {f"{i:06d}{suffix}" for i in range(manifest["count"])}
    try:
      if set(os.listdir(os.path.join(split_dir, sub))) != expected:
        return False
    except OSError:
      return False
  return True


def _check(counts, image_size, seed, num_workers, options):
  integer = (int, np.integer)
  if any(not isinstance(n, integer) or n < 0 for n in counts.values()):
    raise ValueError(f"Image counts must be integers >= 0, got {counts}.")
  if image_size < 3:
    raise ValueError(f"image_size must be at least 3, got {image_size}.")
  if not isinstance(seed, integer) or seed < 0:
    raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
  if num_workers < 1:
    raise ValueError(f"num_workers must be at least 1, got {num_workers}.")
  if options["background"] not in BACKGROUNDS:
    raise ValueError(f"background must be one of {BACKGROUNDS}, got "
                     f"{options['background']!r}.")
  if not 0.0 <= options["hair"] <= 1.0:
    raise ValueError(f"hair is a probability, got {options['hair']}.")
  for name in ("max_yaw", "max_pitch", "max_roll"):
    if not 0.0 <= options[name] < 90.0:
      raise ValueError(f"{name} must be in [0, 90) degrees, got "
                       f"{options[name]}.")


def generate(output_dir, num_train, num_val, num_test, image_size=64, seed=0,
             max_yaw=30.0, overwrite=False, progress=True, num_workers=None,
             max_pitch=10.0, max_roll=10.0, background="gradient", hair=0.0,
             painted=False, start_method=None):
  """Writes the dataset; returns the number of images per split.

  Args:
    output_dir: dataset root; <split>/ for split in SPLITS.
    num_train, num_val, num_test: images per split.
    image_size: side S of the square images.
    seed: integer >= 0; with the split and image index it seeds each image.
    max_yaw, max_pitch, max_roll: largest |angle| in degrees.
    overwrite: replace existing splits (and discard leftover .partial
      directories) instead of keeping complete ones.
    progress: write a progress line (images/s) to stderr.
    num_workers: rendering processes; None: os.cpu_count(); 1 renders in
      this process. The files are the same for any number.
    background: "gradient" or "texture" (noisy, multi-scale, random colours).
    hair: probability of a hair cap (asymmetric parting, depth relief).
    painted: painted eyes (sclera, iris, pupil), brows and lips.
    start_method: multiprocessing start method; None: "fork" on Linux
      (the workers never call TensorFlow), the platform's default elsewhere.
      "spawn" works too, but each worker then imports the package
      (TensorFlow) first.

  Raises:
    FileExistsError: a split exists that is not this generation's complete
      split (other settings, or files missing), unless `overwrite`. A
      complete split with these settings is kept; a leftover
      <split>.partial/ with these settings is finished.
  """
  options = dict(max_yaw=float(max_yaw), max_pitch=float(max_pitch),
                 max_roll=float(max_roll), background=background,
                 hair=float(hair), painted=bool(painted))
  counts = dict(zip(SPLITS, (num_train, num_val, num_test)))
  if num_workers is None:
    num_workers = os.cpu_count() or 1
  _check(counts, image_size, seed, num_workers, options)
  manifests = {
      split: dict(format=FORMAT, split=split, split_index=index,
                  count=counts[split], seed=seed, image_size=image_size,
                  **options)
      for index, split in enumerate(SPLITS)}
  todo = []
  for split in SPLITS:
    final = os.path.join(output_dir, split)
    if overwrite or not os.path.exists(final):
      todo.append(split)
    elif not _is_complete(final, manifests[split]):
      raise FileExistsError(
          f"{final} exists but is not this run's complete split of "
          f"{counts[split]} images (its {MANIFEST_FILE} records other "
          f"settings, or files are missing); pass overwrite=True "
          "(--overwrite) to replace it.")
    else:
      shutil.rmtree(final + ".partial", ignore_errors=True)
      if progress:
        sys.stderr.write(f"synthetic data: kept complete {final}\n")

  plans = []  # (split, partial directory, reuse it, indices to render)
  for split in todo:
    partial = os.path.join(output_dir, split + ".partial")
    count = manifests[split]["count"]
    reuse = (not overwrite and
             _read_manifest(partial) == manifests[split])
    missing = [i for i in range(count) if not reuse or
               not all(map(os.path.isfile, _paths(partial, i)))]
    plans.append((split, partial, reuse, missing))

  total = sum(len(plan[-1]) for plan in plans)
  workers = min(num_workers, total)
  pool = _make_pool(workers, start_method) if workers > 1 else None
  done, start = 0, time.perf_counter()
  try:
    for split, partial, reuse, missing in plans:
      index = SPLITS.index(split)
      if reuse:  # remove a killed writer's temporary files
        for sub in ("image", "depth"):
          os.makedirs(os.path.join(partial, sub), exist_ok=True)
          for name in os.listdir(os.path.join(partial, sub)):
            if name.endswith(".tmp"):
              os.unlink(os.path.join(partial, sub, name))
      else:
        shutil.rmtree(partial, ignore_errors=True)
        for sub in ("image", "depth"):
          os.makedirs(os.path.join(partial, sub))
        atomic_files.write_bytes(os.path.join(partial, MANIFEST_FILE),
                                 json.dumps(manifests[split],
                                            indent=1).encode())
      rows = np.zeros((counts[split], len(VIEW_COLUMNS) - 1))
      for i in sorted(set(range(counts[split])) - set(missing)):
        _, view, light = sample_scene(seed, index, i, **options)
        rows[i] = tuple(view) + tuple(light)
      tasks = [(partial, index, i, seed, image_size, options) for i in missing]
      if pool is None:
        results = map(_render_task, tasks)
      else:
        chunk = max(1, min(8, len(tasks) // (4 * workers)))
        results = pool.imap_unordered(_render_task, tasks, chunksize=chunk)
      for i, row in results:
        rows[i] = row
        done += 1
        if progress and (done % 50 == 0 or done == total):
          rate = done / (time.perf_counter() - start)
          sys.stderr.write(f"\rsynthetic data: {done}/{total} images "
                           f"({100 * done / total:.0f}%, {rate:.0f} img/s, "
                           f"{workers} worker{'s' if workers > 1 else ''})")
          sys.stderr.flush()
      write_views(partial, rows)
      final = os.path.join(output_dir, split)
      shutil.rmtree(final, ignore_errors=True)
      os.replace(partial, final)
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
  if progress and total:
    sys.stderr.write("\n")
  return counts


OPTION_FLAGS = ("max_yaw", "max_pitch", "max_roll", "background", "hair",
                "painted")


def define_flags():
  """Command-line flags of the generator CLI."""
  flags.DEFINE_string("output_dir", None, "Dataset root.")
  for split, default in zip(SPLITS, (10000, 256, 512)):
    flags.DEFINE_integer(f"num_{split}", default, f"Images in {split}.")
  flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
  flags.DEFINE_integer("seed", 0, "Random seed (>= 0).")
  flags.DEFINE_float("max_yaw", 30.0, "Largest |yaw| in degrees.")
  flags.DEFINE_float("max_pitch", 10.0, "Largest |pitch| in degrees.")
  flags.DEFINE_float("max_roll", 10.0, "Largest |roll| in degrees.")
  flags.DEFINE_enum("background", "gradient", BACKGROUNDS,
                    "Smooth gradient or noisy texture behind the face.")
  flags.DEFINE_float("hair", 0.0, "Probability of a hair cap.")
  flags.DEFINE_boolean("painted", False,
                       "Painted eyes (iris, pupil), brows and lips.")
  flags.DEFINE_enum("preset", None, sorted(PRESETS),
                    "Named option set (wild: textured backgrounds, hair "
                    "0.5, painted, yaw 45, pitch 15); flags given "
                    "explicitly override it.")
  flags.DEFINE_integer("num_workers", None,
                       "Rendering processes (default: every core).")
  flags.DEFINE_boolean("overwrite", False, "Replace existing splits.")


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.output_dir:
    raise app.UsageError("--output_dir is required.")
  options = {name: args[name].value for name in OPTION_FLAGS}
  for name, value in PRESETS.get(args.preset, {}).items():
    if not args[name].present:
      options[name] = value
  counts = generate(args.output_dir, args.num_train, args.num_val,
                    args.num_test, image_size=args.image_size, seed=args.seed,
                    overwrite=args.overwrite, num_workers=args.num_workers,
                    **options)
  print(f"Wrote {counts} to {args.output_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
