r"""Does an encoder-decoder keep using its code when trained, per image size?

    TF_NUM_INTRAOP_THREADS=1 taskset -c 0 python benchmarks/autoencoder_probe.py \
        --data_dir=data/synthetic_128 --sizes=64,128 --steps=200

Trains the depth and albedo networks' architecture (`networks.EDDeconv`,
3 channels, tanh) alone as an autoencoder of the training images: L1 to
its own input in [-1, 1], Adam with the L2 decay added to the gradient as
the training loop does, one fresh network per size from the same seed, on
the same image batches (the --data_dir images area-resized to each S). It
then prints, per size and in the same run, the last loss and how much the
activations vary over --probe_images images: the mean over units of the
per-unit standard deviation across images, relative to the mean absolute
activation, at the 1 x 1 code and at the output, and the output's colour
spread (standard deviation over RGB, mean per pixel) against the input's.

An output that varies little over images (relative variation near 0) and
has no colour is the training set's mean image: the network has stopped
reading its code. At initialisation both sizes pass the images' variation
through; README (Resolution, "Learning at 128") has what training does.
"""

import time

from absl import app
from absl import flags

import tf_unsup3d  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TF loads)
import numpy as np
import tensorflow as tf

from tf_unsup3d import networks
from tf_unsup3d.data import datasets

_DATA_DIR = flags.DEFINE_string(
    "data_dir", "data/synthetic_128",
    "Paired dataset root (train/image, train/depth); the first "
    "--num_images train images are read.")
_SIZES = flags.DEFINE_list("sizes", ["64", "128"], "Image sides S.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per size.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per step.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 512, "Training images.")
_PROBE_IMAGES = flags.DEFINE_integer("probe_images", 32,
                                     "Images the variation is measured on.")
_NF = flags.DEFINE_integer("nf", 32, "Network width (synthetic.gin's).")
_ZDIM = flags.DEFINE_integer("zdim", 128, "Code size (synthetic.gin's).")
_LR = flags.DEFINE_float("learning_rate", 3e-4, "Adam step size.")
_DECAY = flags.DEFINE_float("weight_decay", 5e-4,
                            "L2 decay added to the gradient.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation and batch order.")


def load_images(data_dir, count):
  """The first `count` usable train images, `[N, H, W, 3]` in [-1, 1].

  The paired layout's images (`datasets.list_paired`); unreadable or
  corrupt files are skipped and named (`datasets.check_files`).
  """
  paths = [image for image, _ in datasets.list_paired(data_dir, "train")]
  check = datasets.check_files(paths[:count])
  if not check.good:
    raise datasets.DataError(f"None of the first {count} train images of "
                             f"{data_dir} could be read.")
  sizes = set(check.sizes.values())
  if len(sizes) > 1:
    raise datasets.DataError(f"The train images of {data_dir} differ in size "
                             f"({sorted(sizes)}); the probe needs one size.")
  images = [tf.io.decode_image(tf.io.read_file(f), channels=3,
                               expand_animations=False) for f in check.good]
  return tf.cast(tf.stack(images), tf.float32) / 127.5 - 1.0


def relative_variation(activations):
  """Mean per-unit std over images / mean |activation| of `[N, ...]`."""
  a = np.asarray(activations, np.float64).reshape(len(activations), -1)
  return float(a.std(axis=0).mean() / (np.abs(a).mean() + 1e-12))


def code_and_output(net, images):
  """The 1 x 1 code (the last `[N, 1, 1, C]` activation) and the output."""
  h, code = images, None
  for layer in net.body.layers:
    h = layer(h, training=False)
    if h.shape[1] == 1 and h.shape[2] == 1:
      code = h
  return code, h


def probe(size, images, order):
  """Trains one network at `size`; its record."""
  x = tf.image.resize(images, [size, size], method="area")
  tf.keras.utils.set_random_seed(_SEED.value)
  net = networks.EDDeconv(3, zdim=_ZDIM.value, nf=_NF.value,
                          activation="tanh", image_size=size)
  net.build((None, size, size, 3))
  optimizer = tf.keras.optimizers.Adam(_LR.value)
  decay = _DECAY.value

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.abs(net(batch, training=True) - batch))
    grads = tape.gradient(loss, net.trainable_variables)
    grads = [g + decay * v for g, v in zip(grads, net.trainable_variables)]
    optimizer.apply_gradients(zip(grads, net.trainable_variables))
    return loss

  probe_x = x[:_PROBE_IMAGES.value]
  code0, out0 = code_and_output(net, probe_x)
  start, losses = time.time(), []
  for i, batch in enumerate(order):
    losses.append(float(step(tf.gather(x, batch))))
    if (i + 1) % 50 == 0:
      print(f"  S {size}: step {i + 1}/{len(order)}, loss "
            f"{np.mean(losses[-50:]):.4f}, {time.time() - start:.0f} s",
            flush=True)
  code, out = code_and_output(net, probe_x)
  colour = lambda t: float(np.asarray(t).std(axis=-1).mean())
  return {"size": size, "loss_last_50": float(np.mean(losses[-50:])),
          "seconds": time.time() - start,
          "code_variation_init": relative_variation(code0),
          "output_variation_init": relative_variation(out0),
          "code_variation": relative_variation(code),
          "output_variation": relative_variation(out),
          "output_colour": colour(out), "input_colour": colour(probe_x)}


def main(argv):
  del argv
  images = load_images(_DATA_DIR.value, _NUM_IMAGES.value)
  rng = np.random.default_rng(_SEED.value)
  order = [rng.choice(len(images), _BATCH.value, replace=False)
           for _ in range(_STEPS.value)]
  print(f"Autoencoder probe: EDDeconv nf {_NF.value}, zdim {_ZDIM.value}, "
        f"{_STEPS.value} steps of {_BATCH.value}, Adam {_LR.value:g}, L2 "
        f"{_DECAY.value:g}, {len(images)} images from {_DATA_DIR.value}")
  rows = [probe(int(s), images, order) for s in _SIZES.value]
  print(f"{'S':>4s} {'loss':>7s} {'code var (init)':>16s} "
        f"{'output var (init)':>18s} {'colour out / in':>16s} {'s':>6s}")
  for r in rows:
    print(f"{r['size']:4d} {r['loss_last_50']:7.4f} "
          f"{r['code_variation']:7.3f} ({r['code_variation_init']:.3f}) "
          f"{r['output_variation']:8.3f} ({r['output_variation_init']:.3f}) "
          f"{r['output_colour']:7.3f} / {r['input_colour']:.3f} "
          f"{r['seconds']:6.0f}")
  base = rows[0]
  for r in rows[1:]:
    print(f"S {r['size']} / S {base['size']} (same run): output variation "
          f"{r['output_variation'] / base['output_variation']:.2f}, code "
          f"variation {r['code_variation'] / base['code_variation']:.2f}, "
          f"loss {r['loss_last_50'] / base['loss_last_50']:.2f}")


if __name__ == "__main__":
  app.run(main)
