r"""Exports the inference half of a trained model to LiteRT (TFLite).

    python -m tf_unsup3d.export.export_tflite \
        --gin_file=gin_configs/synthetic.gin --checkpoint=runs/synthetic \
        --output=unsup3d.tflite \
        [--quantization=none|float16|dynamic_int8] [--validate_against=DIR] \
        [--tolerance=QUANTITY=MAX ...]

The TFLite model maps images to the canonical factors and their shading:
no rasteriser, so no reconstruction in the input view (render that with
`Renderer` from the outputs, or serve the SavedModel). Its input is
`images [1, S, S, 3]` float32 in [0, 1], S the model's `image_size` (64, 128
or 256, from its gin config); its outputs are `INFERENCE_OUTPUTS`,
named and valued as the SavedModel's outputs of the same names.

Conversion goes through `TFLiteConverter.from_keras_model` on a small Keras
model (`inference_model`) that reuses the trained networks, the renderer's
normals and the Lambertian shading. After conversion the file is checked
with the LiteRT interpreter against the TensorFlow model: every quantity
must be within `TOLERANCES[quantization]`, each in a unit that means
something for it (`QUANTITIES`: degrees for normals, light direction and
view rotation; depth and view translation in units of the depth range;
intensities in [0, 1]; light in [-1, 1]), or the export fails naming the
quantity, its error and the --tolerance override, and nothing is written.
"""

import os

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d import model as model_lib
from tf_unsup3d.export import cli

QUANTIZATIONS = ("none", "float16", "dynamic_int8")
INFERENCE_OUTPUTS = tuple(model_lib.FACTORS)


def _abs(out, ref):
  return np.abs(out - ref)


def _degrees_between(out, ref):
  """Angle in degrees between vectors along the last axis (any lengths)."""
  cross = np.linalg.norm(np.cross(out, ref), axis=-1)
  return np.degrees(np.arctan2(cross, np.sum(out * ref, axis=-1)))


# What the TFLite model is checked on: quantity -> (output, unit, error per
# element given (tflite, reference, depth range) arrays). Each error is in a
# unit that means something for its output, so one tolerance holds for
# random and trained weights alike.
QUANTITIES = {
    "canon_depth": ("canon_depth", "of the depth range",
                    lambda o, r, span: _abs(o, r) / span),
    "canon_albedo": ("canon_albedo", "intensity in [0, 1]",
                     lambda o, r, span: _abs(o, r)),
    "canon_normal": ("canon_normal", "degrees",
                     lambda o, r, span: _degrees_between(o, r)),
    "canon_diffuse_shading": ("canon_diffuse_shading", "intensity in [0, 1]",
                              lambda o, r, span: _abs(o, r)),
    "canon_image": ("canon_image", "intensity in [0, 1]",
                    lambda o, r, span: _abs(o, r)),
    "light": ("light", "in [-1, 1]", lambda o, r, span: _abs(o, r)),
    "light_direction": ("light_direction", "degrees",
                        lambda o, r, span: _degrees_between(o, r)),
    "view_rotation": ("view", "degrees",
                      lambda o, r, span: np.degrees(_abs(o, r)[..., :3])),
    "view_translation": ("view", "of the depth range",
                         lambda o, r, span: _abs(o, r)[..., 3:] / span),
}


# Largest error allowed per quantity, in its unit (`QUANTITIES`), by
# quantization; override one with --tolerance=QUANTITY=MAX. Set from the
# maxima measured (`python -m tf_unsup3d.export.measure`; README, TFLite) on a
# synthetic.gin model trained 625 steps and on random-weight models (nf 8
# and 32) over smooth, noise and face images, with a margin of 4x or more
# (float16, none) and 2x or more (dynamic_int8). Random weights are no guide
# on their own: their views sit near 0, where errors are tiny, while a
# trained model's views spread ~20x wider (a float16 tolerance of 5e-5 rad,
# enough for random weights, refuses trained models). Normals are derivatives
# of depth, so small depth errors become large normal (and shading) errors:
# under dynamic_int8 those two are bounded only by their range (180 degrees,
# 1); use float16 or none when they matter.
TOLERANCES = {
    "none": {"canon_depth": 1e-4, "canon_albedo": 1e-4, "canon_normal": 0.05,
             "canon_diffuse_shading": 1e-3, "canon_image": 5e-4,
             "light": 1e-5, "light_direction": 1e-3, "view_rotation": 1e-3,
             "view_translation": 1e-5},
    "float16": {"canon_depth": 0.01, "canon_albedo": 0.01,
                "canon_normal": 10.0, "canon_diffuse_shading": 0.1,
                "canon_image": 0.04, "light": 1e-3, "light_direction": 0.05,
                "view_rotation": 0.05, "view_translation": 5e-4},
    "dynamic_int8": {"canon_depth": 0.1, "canon_albedo": 0.15,
                     "canon_normal": 180.0, "canon_diffuse_shading": 1.0,
                     "canon_image": 0.3, "light": 0.01,
                     "light_direction": 0.5, "view_rotation": 0.25,
                     "view_translation": 2e-3},
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


def output_errors(outputs, reference, depth_range):
  """Quantity -> max error of `outputs` against `reference`, in its unit.

  Args:
    outputs, reference: dicts with the `INFERENCE_OUTPUTS` arrays.
    depth_range: max_depth - min_depth of the model (scene units).
  """
  errors = {}
  for quantity, (output, _, error) in QUANTITIES.items():
    got = np.asarray(outputs[output], np.float64)
    want = np.asarray(reference[output], np.float64)
    errors[quantity] = float(np.max(error(got, want, depth_range)))
  return errors


class ToleranceError(ValueError):
  """The converted model is further from TensorFlow than its tolerances."""


def tolerances(quantization, overrides=None):
  """Quantity -> tolerance: `TOLERANCES[quantization]`, then `overrides`."""
  limits = dict(TOLERANCES[quantization])
  for quantity, value in (overrides or {}).items():
    if quantity not in limits:
      raise ValueError(f"No quantity {quantity!r} to set a tolerance for; "
                       f"the quantities are {', '.join(QUANTITIES)}.")
    limits[quantity] = float(value)
  return limits


def check_tolerances(errors, quantization, overrides=None):
  """Raises ToleranceError naming every quantity over its tolerance.

  The message gives each error and tolerance in its unit and the
  --tolerance flag that would accept it.
  """
  limits = tolerances(quantization, overrides)
  bad = [(k, e, limits[k]) for k, e in errors.items() if not e <= limits[k]]
  if bad:
    raise ToleranceError(
        f"TFLite ({quantization}) outputs differ from the TensorFlow model "
        "by more than their tolerance: " + "; ".join(
            f"{k} by {e:.3g} {QUANTITIES[k][1]} (tolerance {t:.3g})"
            for k, e, t in bad) +
        ". Nothing was written. To accept these errors, pass " + " ".join(
            f"--tolerance={k}={_round_up(e)}" for k, e, _ in bad) +
        ", or try a lighter --quantization.")


def _round_up(value):
  """`value` rounded up to two significant digits, for a suggested flag."""
  if not value > 0 or not np.isfinite(value):
    return value
  scale = 10.0 ** (np.floor(np.log10(value)) - 1)
  return float(f"{np.ceil(value / scale) * scale:.2g}")


def format_errors(errors, quantization, overrides=None):
  """One line per quantity: its max error and tolerance, in its unit."""
  limits = tolerances(quantization, overrides)
  return "\n".join(
      f"  {key:24s} {error:.2e} {QUANTITIES[key][1]} (tolerance "
      f"{limits[key]:.2g})" for key, error in errors.items())


def validation_images(image_size, count=2, seed=0):
  """Smooth random images `[count, S, S, 3]` in [0, 1] for validation."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(size=(count, 8, 8, 3)).astype(np.float32)
  return tf.image.resize(coarse, [image_size, image_size]).numpy()


def export_tflite(model, output, quantization="none", reference=None,
                  tolerance_overrides=None):
  """Converts, validates and writes `output` atomically; returns the errors.

  Args:
    model: a built `Unsup3D` with its weights.
    output: the .tflite path.
    quantization: one of `QUANTIZATIONS`.
    reference: optional callable images -> dict (e.g. a loaded SavedModel's
      `serving_default`); default the Keras model itself.
    tolerance_overrides: quantity -> tolerance replacing `TOLERANCES`'.

  Returns:
    Quantity -> max error in its unit (`output_errors`).

  Raises:
    ToleranceError: an error exceeds its tolerance; nothing is written.
  """
  keras_model = inference_model(model)
  tflite_bytes = convert(keras_model, quantization)
  images = validation_images(model.image_size)
  reference = reference or (lambda x: model(x, training=False))
  expected = {k: np.asarray(v) for k, v in reference(tf.constant(images)).items()}
  errors = output_errors(tflite_predict(tflite_bytes, images), expected,
                         model.max_depth - model.min_depth)
  check_tolerances(errors, quantization, tolerance_overrides)
  atomic_files.write_bytes(output, tflite_bytes)
  return errors


def parse_tolerances(values):
  """['quantity=value', ...] (the --tolerance flag) -> dict."""
  overrides = {}
  for item in values or ():
    quantity, sep, value = item.partition("=")
    try:
      overrides[quantity.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep:
      raise ValueError(f"--tolerance={item}: expected QUANTITY=NUMBER, e.g. "
                       "--tolerance=view_rotation=0.5 (degrees).")
  return overrides


def define_flags():
  """Command-line flags of the TFLite export CLI."""
  configurable.gin_flags()
  checkpoints.define_checkpoint_flag()
  flags.DEFINE_string("output", None, "The .tflite file to write.")
  flags.DEFINE_enum("quantization", "none", list(QUANTIZATIONS),
                    "Weight quantization.")
  flags.DEFINE_string("validate_against", None, "Optional exported "
                      "SavedModel version folder to compare with (default: "
                      "the Keras model).")
  flags.DEFINE_multi_string(
      "tolerance", [], "QUANTITY=MAX replaces the tolerance of one checked "
      f"quantity, in its unit ({', '.join(f'{k}: {u}' for k, (_, u, _) in QUANTITIES.items())}).")


def main(argv):
  del argv
  model = cli.load_model_from_flags("output")
  args = flags.FLAGS
  reference = None
  if args.validate_against:
    signature = tf.saved_model.load(
        args.validate_against).signatures["serving_default"]
    reference = lambda x: signature(images=x)
  overrides = parse_tolerances(args.tolerance)
  tolerances(args.quantization, overrides)  # Unknown names fail before work.
  errors = export_tflite(model, args.output, args.quantization, reference,
                         overrides)
  print(f"Wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB, "
        f"{args.quantization}); max error against TensorFlow:")
  print(format_errors(errors, args.quantization, overrides))


if __name__ == "__main__":
  define_flags()
  app.run(main)
