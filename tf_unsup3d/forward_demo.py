r"""One forward and backward pass of a small, untrained model on a made-up face.

    python -m tf_unsup3d.forward_demo --output_dir=/tmp/tf_unsup3d_demo \
        [--image_size=64|128|256]

Prints every output's shape and value range, the loss terms and the time
taken, and writes a picture of the predicted factors. A smoke test of the
whole pipeline on any machine, no data or weights needed.
"""

import os
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tf_unsup3d import model as model_lib
from tf_unsup3d import networks
from tf_unsup3d import visualization

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/tf_unsup3d_demo",
                                  "Where to write factors.png.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Images per batch.")
_NF = flags.DEFINE_integer("nf", 16, "Network width (the paper uses 64).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_IMAGE_SIZE = flags.DEFINE_enum(
    "image_size", "64", [str(s) for s in networks.IMAGE_SIZES],
    "Image side S in pixels (64 is the paper's).")


def symmetric_faces(batch, size, seed):
  """`[batch, size, size, 3]` left/right-symmetric blob faces in [0, 1]."""
  rng = np.random.default_rng(seed)
  v, u = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
  images = []
  for _ in range(batch):
    skin = rng.uniform(0.4, 0.9, 3)
    face = np.exp(-(u**2 / 0.35 + v**2 / 0.5) ** 2)
    eyes = sum(np.exp(-((u - s * 0.3)**2 + (v + 0.2)**2) / 0.01)
               for s in (-1, 1))
    mouth = np.exp(-(u**2 / 0.05 + (v - 0.4)**2 / 0.004))
    shade = face * (1 - 0.7 * eyes - 0.5 * mouth)
    images.append(np.clip(shade[..., None] * skin + 0.1, 0, 1))
  return np.stack(images).astype(np.float32)


def main(argv):
  del argv
  tf.random.set_seed(_SEED.value)
  size = int(_IMAGE_SIZE.value)
  model = model_lib.Unsup3D(image_size=size, nf=_NF.value, zdim=_NF.value * 4,
                            light_view_nf=_NF.value // 2,
                            conf_zdim=_NF.value * 2, lam_perc=0.0)
  images = tf.constant(symmetric_faces(_BATCH.value, size, _SEED.value))
  start = time.perf_counter()
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    terms = model.compute_losses(images, outputs)
  grads = tape.gradient(terms["total"], model.trainable_variables)
  elapsed = time.perf_counter() - start
  for key, value in outputs.items():
    value = value.numpy()
    print(f"{key:24s} {str(value.shape):20s} [{value.min():+.3f}, "
          f"{value.max():+.3f}]")
  for key, value in terms.items():
    print(f"loss/{key:19s} {float(value):.4f}")
  nonzero = sum(int(np.any(g.numpy() != 0)) for g in grads if g is not None)
  print(f"{nonzero}/{len(grads)} weight tensors receive a gradient; "
        f"forward + backward (eager, first call) took {elapsed:.2f} s")
  r = model.renderer
  grid = visualization.image_grid([
      images,
      outputs["canon_albedo"],
      visualization.depth_to_rgb(outputs["canon_depth"], r.min_depth,
                                 r.max_depth),
      visualization.normal_to_rgb(outputs["canon_normal"]),
      visualization.gray_to_rgb(outputs["canon_diffuse_shading"]),
      outputs["canon_image"],
      outputs["recon_image"],
      outputs["recon_image_flip"],
  ])
  path = os.path.join(_OUTPUT_DIR.value, "factors.png")
  visualization.write_png(path, grid)
  print(f"Wrote {path}: input, albedo, depth, normal, shading, canonical "
        "image, reconstruction, flipped reconstruction.")


if __name__ == "__main__":
  app.run(main)
