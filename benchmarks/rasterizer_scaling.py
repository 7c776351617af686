r"""Visibility-pass time against resolution, and the training step per size.

    taskset -c 1 nice -n 19 python benchmarks/rasterizer_scaling.py \
        --output=/tmp/rasterizer_scaling.json

Times `rasterizer.visible_triangles` as the renderer calls it (corners
sliced from the vertex grid; graph mode, best of --steps calls after a
warm-up: the one least disturbed by other work) on --batch grid
meshes of S x S depth maps, S in --sizes, at four views (identity, yaw 30 and 60 degrees, roll 45) and for two depth
maps per size:

  smooth  1 + 0.05 tanh of a bicubic-upsampled 6 x 6 normal field, the same
          field at every S (the surface of benchmarks/step_split.py)
  noise   per-pixel uniform noise of half-width 0.1 * 64 / S around 1: the
          64-px maps of tests/test_rasterizer.py, with the same screen-space
          roughness (triangle stretch in pixels) at every S

and prints the time per image, the candidate (triangle, pixel) pairs per
image (the pixels of the triangles' clipped bounding boxes, what the pass
tests), the time per candidate and, per view, time(256) / time(64) (16x the
pixels). With --fixed_noise it adds noise of half-width 0.1 at every S,
whose triangles stretch with S (their candidates grow as S^3).

Same run baselines at 64 px: the tiered pass this one replaced
(benchmarks/tiered_visibility.py: fixed tier counts, exhaustive fallback),
on every view above and on the training case (32 smooth maps under random
views up to 30 degrees, as in step_split.py), and the pass with window=2
(near-frontal triangles through the dense window pass; the default is 0);
on the training case also the pass with its corners gathered through the
face list (any mesh) rather than sliced.

With --step_sizes it also runs, per size, one child process of
`step_split.py --full_step_only` (--gin_file, batch --step_batch, random
images) and reports its step time and peak resident memory (the child's
ru_maxrss).
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

import tf_unsup3d  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TF loads)
import numpy as np
import tensorflow as tf

from tf_unsup3d.rendering import camera
from tf_unsup3d.rendering import rasterizer
from tf_unsup3d.rendering import renderer as renderer_lib
from tf_unsup3d.rendering import transforms
import tiered_visibility  # benchmarks/, the script's folder: the baseline
import timing  # benchmarks/, the script's folder

_SIZES = flags.DEFINE_list("sizes", ["32", "64", "128", "256"],
                           "Image sides S.")
_BATCH = flags.DEFINE_integer("batch", 8, "Depth maps per timed call.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per measurement.")
_FIXED_NOISE = flags.DEFINE_boolean(
    "fixed_noise", False, "Also time noise of half-width 0.1 at every S.")
_STEP_SIZES = flags.DEFINE_list("step_sizes", ["64", "128", "256"],
                                "Sizes of the full training step ([] skips).")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 16, "Training batch size.")
_STEP_STEPS = flags.DEFINE_integer("step_steps", 2,
                                   "Timed training steps per size.")
_GIN = flags.DEFINE_string("gin_file", "gin_configs/synthetic.gin",
                           "Config of the training step.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file of the results.")

VIEWS = {
    "identity": (0.0, 0.0, 0.0),
    "yaw 30": (0.0, 30.0, 0.0),
    "yaw 60": (0.0, 60.0, 0.0),
    "roll 45": (0.0, 0.0, 45.0),
}


def _depth(kind, batch, size, rng):
  """`[B, S, S]` depth maps of `kind` (module docstring)."""
  if kind == "smooth":
    field = np.random.default_rng(0).normal(size=(batch, 6, 6, 1))
    smooth = tf.image.resize(field, [size, size], method="bicubic")[..., 0]
    return tf.cast(1.0 + 0.05 * tf.tanh(smooth), tf.float32)
  half_width = 0.1 * (64 / size if kind == "noise" else 1.0)
  return tf.constant(rng.uniform(1 - half_width, 1 + half_width,
                                 (batch, size, size)), tf.float32)


def _screen(depth, view_degrees):
  """Screen vertices (u, v, z) of the warped grid meshes of `depth`."""
  size = depth.shape[-1]
  renderer = renderer_lib.Renderer(image_size=size)
  batch = depth.shape[0]
  view = tf.constant([list(np.radians(view_degrees)) + [0.0, 0.0, 0.0]] *
                     batch, tf.float32)
  points = tf.reshape(renderer.depth_to_points(depth), [batch, -1, 3])
  points = transforms.warp_points(points, view, renderer.rot_center_depth)
  return tf.concat([camera.project(points, renderer.focal,
                                   renderer.principal_point),
                    points[..., 2:]], -1)


def _candidates_per_image(screen, faces, size):
  # pylint: disable=protected-access
  corners = rasterizer._corners(screen, faces)
  _, _, span_x, span_y = rasterizer._pixel_spans(corners, size, size)
  # pylint: enable=protected-access
  return float(tf.reduce_sum(span_x * span_y)) / screen.shape[0]


def _differing_ids(ids, other, faces):
  """(pixels where two passes pick different triangles, those of them whose
  two triangles share no vertex). A pixel on a vertex shared by both is a
  tie up to rounding, which either triangle resolves correctly; the others
  are real disagreements."""
  ids, other, faces = (np.asarray(t) for t in (ids, other, faces))
  differ = ids != other
  a, b = faces[ids[differ]], faces[other[differ]]  # [N, 3] each
  shared = (a[:, :, None] == b[:, None, :]).any(axis=(1, 2))
  return int(differ.sum()), int((~shared).sum())


def _pass(module, size, **kwargs):
  faces = rasterizer.grid_faces(size, size)
  return tf.function(lambda s: module.visible_triangles(s, faces, size, size,
                                                        **kwargs))


def _visibility_rows():
  rng = np.random.default_rng(1)
  kinds = ["smooth", "noise"] + (["fixed noise"] if _FIXED_NOISE.value
                                 else [])
  rows = []
  for size in (int(s) for s in _SIZES.value):
    new = _pass(rasterizer, size, grid=(size, size))
    faces = rasterizer.grid_faces(size, size)
    for kind in kinds:
      depth = _depth(kind, _BATCH.value, size, rng)
      for view_name, view in VIEWS.items():
        screen = _screen(depth, view)
        row = {"size": size, "depth": kind, "view": view_name,
               "candidates_per_image": _candidates_per_image(screen, faces,
                                                             size)}
        row["seconds_per_image"] = timing.best_seconds(
            lambda: new(screen), _STEPS.value) / _BATCH.value
        if size == 64:
          for name, fn in (("tiered", _pass(tiered_visibility, size)),
                           ("window2", _pass(rasterizer, size,
                                              window=2))):
            row[f"{name}_seconds_per_image"] = timing.best_seconds(
                lambda fn=fn: fn(screen), _STEPS.value) / _BATCH.value
            row[f"{name}_differing_ids"] = _differing_ids(
                new(screen)[0], fn(screen)[0], faces)
        rows.append(row)
        print(json.dumps(row), flush=True)
  return rows


def _training_case():
  """The 2B = 32 depth maps of a 64-px training batch, step_split's views."""
  rng = np.random.default_rng(0)
  size, batch = 64, 32
  depth = _depth("smooth", batch, size, rng)
  renderer = renderer_lib.Renderer(image_size=size)
  view = tf.constant(np.concatenate(
      [rng.uniform(-0.52, 0.52, (batch, 3)),
       rng.uniform(-0.05, 0.05, (batch, 3))], axis=1), tf.float32)
  points = tf.reshape(renderer.depth_to_points(depth), [batch, -1, 3])
  points = transforms.warp_points(points, view, renderer.rot_center_depth)
  screen = tf.concat([camera.project(points, renderer.focal,
                                     renderer.principal_point),
                      points[..., 2:]], -1)
  result = {}
  for name, fn in (("new", _pass(rasterizer, size, grid=(size, size))),
                   ("gathered", _pass(rasterizer, size)),
                   ("tiered", _pass(tiered_visibility, size)),
                   ("window2", _pass(rasterizer, size, window=2))):
    result[f"{name}_seconds"] = timing.best_seconds(lambda fn=fn: fn(screen),
                                                _STEPS.value)
  return result


def _training_step(size):
  """Step seconds and peak RSS (MiB) of a child process at `size`."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "step_split.py")
  args = [sys.executable, script, "--full_step_only",
          f"--steps={_STEP_STEPS.value}", f"--gin_file={_GIN.value}",
          f"--gin_param=Unsup3D.image_size={size}",
          f"--gin_param=train.batch_size={_STEP_BATCH.value}",
          # No data: step_split.py then times random images of this size.
          "--gin_param=make_dataset.data_dir=None"]
  with tempfile.TemporaryFile("w+") as out:
    child = subprocess.Popen(args, stdout=out, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read()
  if child.returncode:
    raise RuntimeError(f"step at {size} px failed: {text[-2000:]}")
  step = json.loads(text.strip().splitlines()[-1])["step"]
  return {"size": size, "batch": _STEP_BATCH.value, "step_seconds": step,
          "peak_rss_mib": usage.ru_maxrss / 1024}


def main(argv):
  del argv
  results = {"batch": _BATCH.value, "steps": _STEPS.value,
             "visibility": _visibility_rows(),
             "training_case_64": _training_case()}
  rows = results["visibility"]
  print(f"\nvisibility pass, batch {_BATCH.value}, graph mode, best of "
        f"{_STEPS.value}: ms per image (candidates per image, ns per "
        "candidate)")
  sizes = sorted({r["size"] for r in rows})
  print(f"{'depth':12s} {'view':9s} " +
        " ".join(f"{s:>26d}" for s in sizes) + f" {'256/64':>7s}")
  ratios = {}
  for kind in dict.fromkeys(r["depth"] for r in rows):
    for view in VIEWS:
      cells, by_size = [], {}
      for size in sizes:
        row = next(r for r in rows if (r["size"], r["depth"], r["view"]) ==
                   (size, kind, view))
        by_size[size] = row["seconds_per_image"]
        cells.append(f"{1e3 * row['seconds_per_image']:8.2f} "
                     f"({row['candidates_per_image']:9.0f}, "
                     f"{1e9 * row['seconds_per_image'] / max(row['candidates_per_image'], 1):4.0f})")
      ratio = (by_size[256] / by_size[64] if 256 in by_size and 64 in by_size
               else float("nan"))
      ratios[f"{kind}, {view}"] = ratio
      print(f"{kind:12s} {view:9s} " + " ".join(f"{c:>26s}" for c in cells) +
            f" {ratio:7.2f}")
  results["ratio_256_over_64"] = ratios
  print("\n64 px, ms per image: new pass, tiered baseline, window=2")
  for row in (r for r in rows if r["size"] == 64):
    print(f"{row['depth']:12s} {row['view']:9s} "
          f"{1e3 * row['seconds_per_image']:8.2f} "
          f"{1e3 * row['tiered_seconds_per_image']:8.2f} "
          f"{1e3 * row['window2_seconds_per_image']:8.2f}  new / tiered "
          f"{row['seconds_per_image'] / row['tiered_seconds_per_image']:.2f}"
          "  differing ids (pixels, of them with no shared vertex): "
          "tiered %d, %d; window=2 %d, %d" % (row["tiered_differing_ids"] +
                                              row["window2_differing_ids"]))
  case = results["training_case_64"]
  print(f"training case (32 smooth 64-px maps, views up to 30 degrees): new "
        f"{case['new_seconds']:.3f} s, gathered corners "
        f"{case['gathered_seconds']:.3f} s, tiered "
        f"{case['tiered_seconds']:.3f} s, window=2 "
        f"{case['window2_seconds']:.3f} s; new / gathered "
        f"{case['new_seconds'] / case['gathered_seconds']:.2f}, new / tiered "
        f"{case['new_seconds'] / case['tiered_seconds']:.2f}")
  results["training_step"] = [_training_step(int(s))
                              for s in _STEP_SIZES.value]
  if results["training_step"]:
    print(f"\ntraining step ({_GIN.value}, batch {_STEP_BATCH.value}, "
          "random images)")
    for row in results["training_step"]:
      print(f"{row['size']:4d} px: {row['step_seconds']:7.2f} s / step, "
            f"peak RSS {row['peak_rss_mib']:7.0f} MiB")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
