r"""Exports the inference half of a trained model to LiteRT (TFLite).

    python -m export.export_tflite --gin_file=gin_configs/synthetic.gin \
        --checkpoint=runs/synthetic --output=unsup3d.tflite \
        [--quantization=none|float16|dynamic_int8] [--validate_against=DIR]

The TFLite model maps images to the canonical factors and their shading:
no rasteriser, so no reconstruction in the input view (render that with
`Renderer` from the outputs, or serve the SavedModel). Its input is
`images [N, 64, 64, 3]` float32 in [0, 1]; its outputs are `INFERENCE_OUTPUTS`,
named and valued as the SavedModel's outputs of the same names.

Conversion goes through `TFLiteConverter.from_keras_model` on a small Keras
model (`inference_model`) that reuses the trained networks, the renderer's
normals and the Lambertian shading. After conversion the file is checked
with the LiteRT interpreter against the TensorFlow model: every output must
be within `TOLERANCES[quantization]` (max abs difference), or the export
fails and nothing is written.
"""

import os

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import configurable
from tf_unsup3d import evaluate

QUANTIZATIONS = ("none", "float16", "dynamic_int8")
INFERENCE_OUTPUTS = ("canon_depth", "canon_albedo", "canon_normal",
                     "canon_diffuse_shading", "canon_image", "light",
                     "light_direction", "view")

# Max abs difference allowed per output against the TensorFlow model, by
# quantization. Measured maxima (`python -m export.measure`, random weights,
# nf 8 and 32 x 3 seeds, smooth and noise images), then a 5-10x margin:
#   none:    depth 8e-7, albedo 4e-6, normal 1.2e-4, shading 6e-5,
#            canon_image 2e-5, light / light_direction / view 6e-8
#   float16: depth 4.7e-4, albedo 1.9e-3, normal 4.5e-2, shading 1.7e-2,
#            canon_image 5.8e-3, light / light_direction / view 4e-6
#   dynamic_int8: depth 1.0e-2, albedo 5.9e-2, normal 1.1, shading 0.42,
#            canon_image 0.14, light / light_direction / view 8.3e-5
# Normals are derivatives of depth, so small depth errors become large
# normal (and shading) errors; under dynamic_int8 those two are bounded only
# by their range (2 and 1): use float16 or none when they matter.
TOLERANCES = {
    "none": {"canon_depth": 1e-5, "canon_albedo": 5e-5, "canon_normal": 1e-3,
             "canon_diffuse_shading": 5e-4, "canon_image": 2e-4,
             "light": 1e-6, "light_direction": 1e-6, "view": 1e-6},
    "float16": {"canon_depth": 5e-3, "canon_albedo": 2e-2,
                "canon_normal": 0.25, "canon_diffuse_shading": 0.1,
                "canon_image": 5e-2, "light": 5e-5, "light_direction": 5e-5,
                "view": 5e-5},
    "dynamic_int8": {"canon_depth": 5e-2, "canon_albedo": 0.25,
                     "canon_normal": 2.0, "canon_diffuse_shading": 1.0,
                     "canon_image": 0.5, "light": 1e-3,
                     "light_direction": 1e-3, "view": 1e-3},
}


class CanonicalFactors(keras.layers.Layer):
  """Images -> canonical factors with the trained networks of an `Unsup3D`
  (`Unsup3D.canonical_factors`: no rasterisation)."""

  def __init__(self, model, **kwargs):
    super().__init__(name="canonical_factors", **kwargs)
    self.unsup3d = model

  def call(self, images):
    return self.unsup3d.canonical_factors(images)


def inference_model(model, batch_size=1):
  """Keras model: images `[batch, S, S, 3]` in [0, 1] -> dict of factors."""
  s = model.image_size
  images = keras.Input((s, s, 3), batch_size=batch_size, name="images")
  return keras.Model(images, CanonicalFactors(model)(images),
                     name="unsup3d_inference")


def convert(keras_model, quantization="none"):
  """TFLite flatbuffer bytes of `keras_model` with a quantization scheme.

  none: float32. float16: weights stored as float16 (half the size),
  computed in float32 on CPU. dynamic_int8: weights int8, activations
  quantized on the fly (about a quarter of the size).
  """
  if quantization not in QUANTIZATIONS:
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got "
                     f"{quantization!r}.")
  converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
  if quantization != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == "float16":
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def tflite_predict(tflite_bytes, images, num_threads=None):
  """Runs a converted model with the LiteRT interpreter, one image at a time.

  Returns:
    Dict of `INFERENCE_OUTPUTS` NumPy arrays with batch `len(images)`.
  """
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_content=tflite_bytes,
                            num_threads=num_threads)
  runner = interpreter.get_signature_runner()
  results = [runner(images=np.asarray(images[i:i + 1], np.float32))
             for i in range(len(images))]
  return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def max_abs_diffs(outputs, reference):
  """Output name -> max |outputs - reference| over `INFERENCE_OUTPUTS`."""
  return {k: float(np.max(np.abs(np.asarray(outputs[k]) -
                                 np.asarray(reference[k]))))
          for k in INFERENCE_OUTPUTS}


def check_tolerances(diffs, quantization):
  """Raises ValueError naming every output over its tolerance."""
  bad = {k: (d, TOLERANCES[quantization][k]) for k, d in diffs.items()
         if not d <= TOLERANCES[quantization][k]}
  if bad:
    raise ValueError(f"TFLite ({quantization}) outputs differ from the "
                     "TensorFlow model by more than their tolerance: " +
                     ", ".join(f"{k} {d:.3g} > {t:.3g}"
                               for k, (d, t) in sorted(bad.items())))


def format_diffs(diffs, quantization):
  """One line per output: its max abs difference and its tolerance."""
  return "\n".join(
      f"  {key:24s} {diff:.2e} (tolerance "
      f"{TOLERANCES[quantization][key]:.2g})" for key, diff in diffs.items())


def validation_images(image_size=64, count=2, seed=0):
  """Smooth random images `[count, S, S, 3]` in [0, 1] for validation."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(size=(count, 8, 8, 3)).astype(np.float32)
  return tf.image.resize(coarse, [image_size, image_size]).numpy()


def export_tflite(model, output, quantization="none", reference=None):
  """Converts, validates and writes `output` atomically; returns the diffs.

  Args:
    model: a built `Unsup3D` with its weights.
    output: the .tflite path.
    quantization: one of `QUANTIZATIONS`.
    reference: optional callable images -> dict (e.g. a loaded SavedModel's
      `serving_default`); default the Keras model itself.
  """
  keras_model = inference_model(model)
  tflite_bytes = convert(keras_model, quantization)
  images = validation_images(model.image_size)
  reference = reference or (lambda x: model(x, training=False))
  expected = {k: np.asarray(v) for k, v in reference(tf.constant(images)).items()}
  diffs = max_abs_diffs(tflite_predict(tflite_bytes, images), expected)
  check_tolerances(diffs, quantization)
  atomic_files.write_bytes(output, tflite_bytes)
  return diffs


def define_flags():
  """Command-line flags of the TFLite export CLI."""
  configurable.gin_flags()
  flags.DEFINE_string("checkpoint", None, "A model_dir, a checkpoint prefix "
                      "or a .weights.h5 file.")
  flags.DEFINE_string("output", None, "The .tflite file to write.")
  flags.DEFINE_enum("quantization", "none", list(QUANTIZATIONS),
                    "Weight quantization.")
  flags.DEFINE_string("validate_against", None, "Optional exported "
                      "SavedModel version folder to compare with (default: "
                      "the Keras model).")


def main(argv):
  del argv
  configurable.parse_gin_flags(skip_unknown=("train", "generate_synthetic"))
  args = flags.FLAGS
  if not args.checkpoint or not args.output:
    raise app.UsageError("--checkpoint and --output are required.")
  model = evaluate.load_model(args.checkpoint)
  reference = None
  if args.validate_against:
    signature = tf.saved_model.load(
        args.validate_against).signatures["serving_default"]
    reference = lambda x: signature(images=x)
  diffs = export_tflite(model, args.output, args.quantization, reference)
  print(f"Wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB, "
        f"{args.quantization}); max abs difference to TensorFlow:")
  print(format_diffs(diffs, args.quantization))


if __name__ == "__main__":
  define_flags()
  app.run(main)
