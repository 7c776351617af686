r"""Forward + backward time of one training batch, and where it goes.

    python benchmarks/forward_backward.py --batch_size=16 --steps=5

Times, after one warm-up call, the median of `--steps` calls of:
  * full step: model forward + paper losses + gradients (graph mode, and
    with XLA when --xla), the time a training step spends;
  * baseline, networks only: the same five networks' forward + backward
    on a plain L1 loss, no rendering (the reference point for the ratio);
  * depth raster only: `Renderer.warp_canon_depth` forward on the 2B depth
    maps of a batch (the pure-TF z-buffer + the barycentrics), for smooth
    depth (about one candidate pixel per triangle) and for per-pixel noise
    depth at the same views (long thin triangles, many candidates each).
The VGG16 of the perceptual loss runs with random weights: same cost.
"""

import statistics
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tf_unsup3d import model as model_lib
from tf_unsup3d import value_ranges

_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per batch.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per measurement.")
_NF = flags.DEFINE_integer("nf", 64, "Width of depth/albedo/conf nets (paper 64).")
_XLA = flags.DEFINE_boolean("xla", True, "Also time the step under XLA.")
_CHUNK = flags.DEFINE_integer("candidate_chunk", 1 << 17,
                              "(Triangle, pixel) pairs per visibility-pass "
                              "step.")


def _median_seconds(fn, steps):
  fn()  # Warm-up: tracing, compilation, allocation.
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    result = fn()
    tf.nest.map_structure(lambda t: t.numpy(), result)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  batch = _BATCH.value
  model = model_lib.Unsup3D(nf=_NF.value, zdim=_NF.value * 4,
                            conf_zdim=_NF.value * 2, vgg_weights=None,
                            candidate_chunk=_CHUNK.value)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(0, 1, (batch, 64, 64, 3)), tf.float32)
  model(images)
  variables = model.trainable_variables
  nets = [model.net_depth, model.net_albedo, model.net_light, model.net_view,
          model.net_conf]

  def full_step(x):
    with tf.GradientTape() as tape:
      total = model.compute_losses(x, model(x, training=True))["total"]
    return total, tape.gradient(total, variables)

  def networks_step(x):
    with tf.GradientTape() as tape:
      x1 = value_ranges.to_signed(x)
      outputs = tf.nest.flatten([net(x1, training=True) for net in nets])
      total = tf.add_n([tf.reduce_mean(tf.abs(o)) for o in outputs])
    return total, tape.gradient(total, variables)

  smooth = tf.image.resize(rng.normal(size=(2 * batch, 6, 6, 1)), [64, 64],
                           method="bicubic")[..., 0]
  smooth_depth = tf.cast(1.0 + 0.05 * tf.tanh(smooth), tf.float32)
  noise_depth = tf.constant(rng.uniform(0.9, 1.1, (2 * batch, 64, 64)),
                            tf.float32)
  view = tf.constant(np.concatenate(
      [rng.uniform(-1.0, 1.0, (2 * batch, 3)),
       rng.uniform(-0.1, 0.1, (2 * batch, 3))], axis=1), tf.float32)

  rows = []
  graph_full = tf.function(full_step)
  rows.append(("full step, graph", _median_seconds(
      lambda: graph_full(images), _STEPS.value)))
  if _XLA.value:
    xla_full = tf.function(full_step, jit_compile=True)
    rows.append(("full step, XLA", _median_seconds(
        lambda: xla_full(images), _STEPS.value)))
  baseline = tf.function(networks_step)
  base = _median_seconds(lambda: baseline(images), _STEPS.value)
  rows.append(("baseline: networks only, graph", base))
  raster = tf.function(model.renderer.warp_canon_depth)
  rows.append(("depth raster, smooth depth, graph", _median_seconds(
      lambda: raster(smooth_depth, view), _STEPS.value)))
  rows.append(("depth raster, noise depth, graph", _median_seconds(
      lambda: raster(noise_depth, view), _STEPS.value)))

  print(f"\nbatch {batch} at 64x64, nf {_NF.value}, candidate_chunk "
        f"{_CHUNK.value}, {len(tf.config.list_logical_devices())} device(s): "
        f"{[d.device_type for d in tf.config.list_logical_devices()]}")
  print(f"{'measurement':38s} {'s/batch':>9s} {'ms/image':>9s} "
        f"{'x baseline':>10s}")
  for name, seconds in rows:
    print(f"{name:38s} {seconds:9.3f} {1000 * seconds / batch:9.1f} "
          f"{seconds / base:10.2f}")


if __name__ == "__main__":
  app.run(main)
