r"""Where a training step's time goes, phase by phase, for a gin config.

    python benchmarks/step_split.py --gin_file=gin_configs/synthetic.gin \
        [--checkpoint=runs/synthetic] [--data_dir=data/synthetic] [--steps=5]

Times (median of --steps calls after a warm-up, graph mode) one training
step of the config's model and batch size (`train.make_train_step` under
--strategy), and each phase on its own:

  networks     the depth, albedo, light, view (and confidence) networks'
               forward + backward, no rendering
  visibility   the pure-TF z-buffer of the 2B depth maps (no gradient)
  raster       visibility + the differentiable barycentrics and depth
               interpolation, forward + backward to the depth maps; also
               timed with TFG's `differentiable_barycentrics` in place of
               the closed form (`with TFG`), the same-run baseline of
               that choice
  sampling     inverse-warp grid + bilinear sampling of the canonical
               images, forward + backward
  shading      normals, Lambertian shading, canonical image, fwd + bwd
  losses       the config's losses on given images, forward + backward
  optimiser    one Adam update of every weight
  re-rendering with the re-rendered view term on: its B (B more with
               Unsup3D.rerender_view_equivariance) renderings, forward
               only, their depth without barycentrics as the model
               renders them; also timed with them (`with barycentrics`)

Rendering's share is (raster + sampling + re-rendering) / step. The depth maps and views
are the model's own predictions on real images of --data_dir's val split
when --checkpoint is given (what training sees), else smooth random depth
under random views up to 30 degrees. With --onednn_compare the full step is
also timed in two child processes with TensorFlow's oneDNN kernels off and
on (TF_ENABLE_ONEDNN_OPTS), so their ratio comes from one run; with
--strategy_compare under a one-replica MirroredStrategy and
OneDeviceStrategy (train.py's --strategy=auto picks the latter without
several GPUs).
"""

import json
import os
import subprocess
import sys
from unittest import mock

from absl import app
from absl import flags

import tf_unsup3d  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TF loads)
import gin
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import checkpoints
from tf_unsup3d import gin_configs
from tf_unsup3d import train as train_lib
from tf_unsup3d import value_ranges
from tf_unsup3d.data import datasets
from tf_unsup3d.rendering import rasterizer
from tf_unsup3d.rendering import sampling
import timing  # benchmarks/, the script's folder

_GIN = flags.DEFINE_multi_string("gin_file", ["gin_configs/synthetic.gin"],
                                 "Config(s).")
_PARAMS = flags.DEFINE_multi_string("gin_param", [], "Extra bindings.")
_CHECKPOINT = checkpoints.define_checkpoint_flag(without="random weights")
_DATA = flags.DEFINE_string("data_dir", None, "Images (default: the gin "
                            "make_dataset.data_dir); random if none.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per phase.")
_ONEDNN = flags.DEFINE_boolean("onednn_compare", False,
                               "Also time the step with oneDNN off and on.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", ["auto", "mirrored", "one_device"],
    "The training step's tf.distribute strategy (train.py's --strategy).")
_STRATEGY_COMPARE = flags.DEFINE_boolean(
    "strategy_compare", False,
    "Also time the full step under a one-replica MirroredStrategy and "
    "OneDeviceStrategy (each in a child process).")
_FULL_ONLY = flags.DEFINE_boolean("full_step_only", False,
                                  "Print only the full step (JSON).")


def _bound(name, default):
  """The config's value of gin parameter `name`, or `default` if unbound."""
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def _images(batch, size):
  """The first `[batch, S, S, 3]` val images of the data pipeline (random
  images where there is no data)."""
  if _DATA.value:
    with gin.unlock_config():
      gin.bind_parameter("make_dataset.data_dir", _DATA.value)
  try:
    dataset, _ = datasets.make_dataset("val", training=False,
                                       batch_size=batch)
    images = next(iter(dataset))["image"]
  except (ValueError, StopIteration):  # no data_dir, no split, empty
    images = None
  if images is None or images.shape[0] < batch:
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(0, 1, (batch, size, size, 3)), tf.float32)
  return images


def main(argv):
  del argv
  gin.parse_config_files_and_bindings(
      [gin_configs.resolve(f) for f in _GIN.value],
      _PARAMS.value + ["Unsup3D.vgg_weights = None"])
  batch = gin.query_parameter("train.batch_size")
  strategy = train_lib.make_strategy(_STRATEGY.value)
  mixed_precision = _bound("train.mixed_precision", False)
  with strategy.scope():
    if _CHECKPOINT.value:
      model = checkpoints.load_model(_CHECKPOINT.value, mixed_precision)
      optimizer = keras.optimizers.Adam(1e-4)
      optimizer.build(model.trainable_variables)
    else:
      # As the training loop builds it, in the config's precision.
      state = train_lib.build_model_and_optimizer(
          strategy, mixed_precision=mixed_precision)
      model, optimizer = state.model, state.optimizer
    variables = model.trainable_variables
  size = model.image_size
  x = _images(batch, size)
  # The training loop's own step (loss weights as the config sets them).
  train_step = train_lib.make_train_step(
      model, optimizer, strategy,
      weight_decay=gin.query_parameter("train.weight_decay"))
  lam_flip = tf.constant(model.lam_flip)
  lam_depth_sm = tf.constant(model.lam_depth_sm)
  lam_rerender_view = tf.constant(model.lam_rerender_view)
  lam_depth_deviation = tf.constant(model.lam_depth_deviation)
  # The batch distributed as the training loop's dataset delivers it.
  batch_of = lambda x: strategy.experimental_distribute_values_from_function(
      lambda _: {"image": x})
  full_step = lambda x: train_step(batch_of(x), lam_flip, lam_depth_sm,
                                   lam_rerender_view, lam_depth_deviation)[0]

  step = timing.median_seconds(lambda: full_step(x), _STEPS.value)
  if _FULL_ONLY.value:
    print(json.dumps({"step": step}))
    return

  nets = [n for n in (model.net_depth, model.net_albedo, model.net_light,
                      model.net_view, model.net_conf) if n is not None]

  @tf.function
  def networks(x):
    with tf.GradientTape() as tape:
      outputs = tf.nest.flatten([net(value_ranges.to_signed(x), training=True)
                                 for net in nets])
      total = tf.add_n([tf.reduce_mean(tf.cast(o, tf.float32))
                        for o in outputs])
    return tape.gradient(total, variables)

  outputs = model(x, training=False)
  renderer = model.renderer
  if _CHECKPOINT.value:
    depth = outputs["canon_depth"]
    view = outputs["view"]
  else:
    rng = np.random.default_rng(0)
    smooth = tf.image.resize(rng.normal(size=(batch, 6, 6, 1)), [size, size],
                             method="bicubic")[..., 0]
    depth = tf.cast(1.0 + 0.05 * tf.tanh(smooth), tf.float32)
    view = tf.constant(np.concatenate(
        [rng.uniform(-0.52, 0.52, (batch, 3)),
         rng.uniform(-0.05, 0.05, (batch, 3))], axis=1), tf.float32)
  depth = tf.concat([depth, tf.reverse(depth, [2])], axis=0)
  view = tf.tile(view, [2, 1])
  canon_image = tf.tile(value_ranges.to_signed(outputs["canon_image"]),
                        [2, 1, 1, 1])

  visibility = tf.function(lambda d, v: renderer.warp_canon_depth(
      tf.stop_gradient(d), v))

  def raster_fn():
    @tf.function
    def raster(d, v):
      with tf.GradientTape() as tape:
        tape.watch(d)
        total = tf.reduce_sum(renderer.warp_canon_depth(d, v))
      return tape.gradient(total, d)
    return raster

  raster = raster_fn()
  raster_tfg = raster_fn()
  # rasterize_depth looks pixel_barycentrics up when traced: trace the
  # baseline now, with TFG's in its place.
  with mock.patch.object(rasterizer, "pixel_barycentrics",
                         rasterizer.tfg_pixel_barycentrics):
    raster_tfg.get_concrete_function(depth, view)

  recon_depth = renderer.warp_canon_depth(depth, view)

  @tf.function
  def sample(rd, v, image):
    with tf.GradientTape() as tape:
      tape.watch([rd, image])
      grid = renderer.inverse_warp_grid(rd, v)
      total = tf.reduce_sum(sampling.bilinear_sample(image, grid))
    return tape.gradient(total, [rd, image])

  light = tf.tile(tf.zeros([batch, 4]), [2, 1])
  albedo = canon_image

  @tf.function
  def shade(d, a, light):
    with tf.GradientTape() as tape:
      tape.watch([d, a, light])
      total = tf.reduce_sum(model.shade(d, a, light)["canon_image"])
    return tape.gradient(total, [d, a, light])

  loss_inputs = {k: tf.identity(v) for k, v in outputs.items()}

  @tf.function
  def loss_only(x, outs):
    with tf.GradientTape() as tape:
      tape.watch(outs)
      total = model.compute_losses(x, outs)["total"]
    return tape.gradient(total, [outs["recon_image"],
                                 outs["recon_image_flip"]])

  zero_grads = [tf.zeros_like(v) for v in variables]

  @tf.function
  def optimise():
    optimizer.apply_gradients(zip(zero_grads, variables))
    return tf.constant(0.0)

  seconds = lambda fn: timing.median_seconds(fn, _STEPS.value)
  rows = [
      ("full step", step),
      ("networks", seconds(lambda: networks(x))),
      ("visibility", seconds(lambda: visibility(depth, view))),
      ("raster", seconds(lambda: raster(depth, view))),
      ("  with TFG", seconds(lambda: raster_tfg(depth, view))),
      ("sampling", seconds(lambda: sample(recon_depth, view, canon_image))),
      ("shading", seconds(lambda: shade(depth, albedo, light))),
      ("losses", seconds(lambda: loss_only(x, loss_inputs))),
      ("optimiser", seconds(optimise)),
  ]
  if model.lam_rerender_view > 0:
    count = (2 if model.rerender_view_equivariance else 1) * batch
    rerender = {
        differentiable: tf.function(
            lambda d, v, im, differentiable=differentiable:
            renderer.render_view(im, d, v, differentiable)[0])
        for differentiable in (False, True)}
    parts = depth[:count], view[:count], canon_image[:count]
    rows += [("re-rendering", seconds(lambda: rerender[False](*parts))),
             ("  with barycentrics",
              seconds(lambda: rerender[True](*parts)))]
  times = dict(rows)
  print(f"\nbatch {batch} at {size}x{size}, config {_GIN.value}, "
        f"{'trained' if _CHECKPOINT.value else 'untrained'} weights, "
        f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, "
        f"{type(strategy).__name__}, networks in "
        f"{model.net_albedo.compute_dtype}")
  print(f"{'phase':20s} {'s/step':>8s} {'share of step':>14s}")
  for name, seconds in rows:
    print(f"{name:20s} {seconds:8.3f} {seconds / step:14.2f}")
  rendering = (times["raster"] + times["sampling"] +
               times.get("re-rendering", 0.0))
  print(f"rendering (raster + sampling + re-rendering) {rendering:.3f} s = "
        f"{100 * rendering / step:.0f}% of the step")
  print(f"raster with closed-form / TFG's barycentrics: "
        f"{times['raster'] / times['  with TFG']:.2f}")
  if "re-rendering" in times:
    print(f"re-rendering without / with barycentrics: "
          f"{times['re-rendering'] / times['  with barycentrics']:.2f}")
  if _ONEDNN.value:
    off = _child_step({"TF_ENABLE_ONEDNN_OPTS": "0"}, [])
    on = _child_step({"TF_ENABLE_ONEDNN_OPTS": "1"}, [])
    print(f"full step, oneDNN off {off:.3f} s, on {on:.3f} s: "
          f"on / off {on / off:.2f}")
  if _STRATEGY_COMPARE.value:
    mirrored = _child_step({}, ["--strategy=mirrored"])
    one = _child_step({}, ["--strategy=one_device"])
    print(f"full step, MirroredStrategy {mirrored:.3f} s, OneDeviceStrategy "
          f"{one:.3f} s: one device / mirrored {one / mirrored:.2f}")


def _child_step(env, extra_args):
  """The full step's seconds in a child process with `env` and args."""
  args = [sys.executable, __file__, "--full_step_only",
          f"--steps={_STEPS.value}"] + extra_args
  args += [f"--gin_file={g}" for g in _GIN.value]
  args += [f"--gin_param={p}" for p in _PARAMS.value]
  if _CHECKPOINT.value:
    args.append(f"--checkpoint={_CHECKPOINT.value}")
  if _DATA.value:
    args.append(f"--data_dir={_DATA.value}")
  out = subprocess.run(args, env=dict(os.environ, **env), capture_output=True,
                       text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])["step"]

if __name__ == "__main__":
  app.run(main)
