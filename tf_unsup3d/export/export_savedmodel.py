r"""Exports a trained model as a TensorFlow Serving SavedModel.

    python -m tf_unsup3d.export.export_savedmodel \
        --gin_file=gin_configs/synthetic.gin --checkpoint=runs/synthetic --output_dir=exported/unsup3d \
        [--version=N] [--overwrite] [--max_pixels=16777216]

Writes `output_dir/<version>/` (default version: one above the highest
there, 1 if none), the layout TF Serving watches. An existing version is
never replaced without --overwrite; the export is written to a hidden
temporary folder beside it and renamed into place, so a crash never leaves
half a version for the server to load.

Signatures (see `OUTPUTS` for the outputs, the same for both), S the
model's `image_size` (64, 128 or 256, from its gin config):
  serving_default        images `[N, S, S, 3]` float32 in [0, 1]
  predict_images_bytes   image_bytes `[N]` string: encoded JPEG, PNG (8/16
                         bit, grey, RGBA), GIF or BMP files of any size,
                         decoded, centre-cropped and resized to S x S in
                         the graph;
                         files over --max_pixels pixels are rejected from
                         their header, before decoding.

`assets.extra/tf_serving_warmup_requests` holds one PredictionLog per
signature, which TF Serving replays when it loads the version.
"""

import json
import os
import re
import shutil
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d import model as model_lib
from tf_unsup3d import preprocessing
from tf_unsup3d.export import cli
from tf_unsup3d.export.serving import client

IMAGES_SIGNATURE = client.IMAGES_SIGNATURE
BYTES_SIGNATURE = client.BYTES_SIGNATURE
SIGNATURES = (IMAGES_SIGNATURE, BYTES_SIGNATURE)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Output name -> (shape, values): the model's (`model.OUTPUTS`, B = N
# images) but three that only training uses, the depth before its border is
# set and the mirrored branch's reconstructions.
OUTPUTS = {k: v for k, v in model_lib.OUTPUTS.items()
           if k not in ("canon_depth_unbordered", "recon_image_flip",
                        "recon_depth_flip")}


def _select_outputs(outputs):
  return {k: outputs[k] for k in OUTPUTS if k in outputs}


def _check_not_empty(batch, name):
  """`batch` once its first dimension is checked to be at least 1.

  An empty batch would otherwise reach the convolutions, whose oneDNN
  kernels fail with "input depth must be evenly divisible by filter depth".
  """
  check = tf.debugging.assert_greater(
      tf.shape(batch)[0], 0, message=(
          f"{name} is an empty batch: send at least one image per request"))
  with tf.control_dependencies([check]):
    return tf.identity(batch)


class ServingModule(tf.Module):
  """The model's inference pass with the two serving signatures."""

  def __init__(self, model, max_pixels=preprocessing.DEFAULT_MAX_PIXELS):
    """Args:
      model: a built `Unsup3D`.
      max_pixels: largest image (height x width) `predict_images_bytes`
        accepts.
    """
    super().__init__(name="unsup3d_serving")
    self.model = model
    self.max_pixels = int(max_pixels)
    s = model.image_size
    self.predict_images = tf.function(
        self._predict_images, input_signature=[
            tf.TensorSpec([None, s, s, 3], tf.float32, name="images")])
    self.predict_images_bytes = tf.function(
        self._predict_images_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")])
    config = json.dumps(self.renderer_config(model), sort_keys=True)
    self.renderer_config_json = tf.function(
        lambda: tf.constant(config), input_signature=[])

  @staticmethod
  def renderer_config(model):
    """The `Renderer` arguments, for clients that render (the demo)."""
    r = model.renderer
    return {"image_size": r.image_size, "fov": r.fov,
            "min_depth": r.min_depth, "max_depth": r.max_depth,
            "rot_center_depth": r.rot_center_depth}

  def _predict_images(self, images):
    """`[N, S, S, 3]` float in [0, 1] -> dict of `OUTPUTS`."""
    with tf.name_scope("predict_images"):
      images = _check_not_empty(images, "images")
      return _select_outputs(self.model(images, training=False))

  def _predict_images_bytes(self, image_bytes):
    """`[N]` encoded image files -> dict of `OUTPUTS`."""
    with tf.name_scope("predict_images_bytes"):
      image_bytes = _check_not_empty(image_bytes, "image_bytes")
      images = preprocessing.decode_images(
          image_bytes, self.model.image_size, self.max_pixels)
      return _select_outputs(self.model(images, training=False))

  def signatures(self):
    return {
        IMAGES_SIGNATURE: self.predict_images.get_concrete_function(),
        BYTES_SIGNATURE: self.predict_images_bytes.get_concrete_function(),
    }


def warmup_inputs(image_size, max_pixels=preprocessing.DEFAULT_MAX_PIXELS):
  """Signature -> inputs of its warmup request (small, deterministic).

  An `[1, S, S, 3]` image for `serving_default`; for
  `predict_images_bytes` that image resized to 3S/2 x 5S/4 (non-square and
  not a multiple of S, so the signature crops and resamples it), or smaller
  to stay within `max_pixels`, as a PNG and a JPEG.
  """
  v, u = np.mgrid[0:image_size, 0:image_size] / (image_size - 1)
  image = np.stack([u, v, 1.0 - u * v], axis=-1).astype(np.float32)
  height, width = 3 * image_size // 2, 5 * image_size // 4
  shrink = min(1.0, (max_pixels / (height * width)) ** 0.5)
  height, width = max(1, int(height * shrink)), max(1, int(width * shrink))
  big = tf.image.resize(image, [height, width], antialias=True)
  big = tf.cast(tf.round(tf.clip_by_value(big, 0.0, 1.0) * 255), tf.uint8)
  files = [tf.io.encode_png(big).numpy(), tf.io.encode_jpeg(big).numpy()]
  return {IMAGES_SIGNATURE: image[None], BYTES_SIGNATURE: files}


def write_warmup_requests(path, model_name, image_size,
                          max_pixels=preprocessing.DEFAULT_MAX_PIXELS):
  """TFRecord of `PredictionLog`s: one request per signature, for a model
  of `image_size` S whose bytes signature takes up to `max_pixels`."""
  with tf.io.TFRecordWriter(path) as writer:
    for signature, inputs in warmup_inputs(image_size, max_pixels).items():
      request = client.make_predict_request(inputs, model_name, signature,
                                            image_size=image_size)
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


def read_warmup_requests(path):
  """The `PredictRequest`s of a warmup file."""
  requests = []
  for record in tf.data.TFRecordDataset(path):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    requests.append(log.predict_log.request)
  return requests


def existing_versions(output_dir):
  """Sorted integer version folders in `output_dir`."""
  if not os.path.isdir(output_dir):
    return []
  return sorted(int(n) for n in os.listdir(output_dir)
                if re.fullmatch(r"\d+", n) and
                os.path.isdir(os.path.join(output_dir, n)))


def export_saved_model(model, output_dir, version=None, overwrite=False,
                       max_pixels=preprocessing.DEFAULT_MAX_PIXELS,
                       model_name=client.DEFAULT_MODEL_NAME):
  """Writes `output_dir/<version>/` and returns its path.

  Args:
    model: a built `Unsup3D` with its weights.
    output_dir: the model's base path for TF Serving.
    version: positive integer; default one above the highest existing.
    overwrite: replace an existing `version`.
    max_pixels: largest image the bytes signature decodes.
    model_name: model name written in the warmup requests.

  Raises:
    FileExistsError: `version` exists and `overwrite` is False.
  """
  versions = existing_versions(output_dir)
  version = int(version) if version is not None else (
      versions[-1] + 1 if versions else 1)
  if version < 1:
    raise ValueError(f"version must be a positive integer, got {version}.")
  final = os.path.join(output_dir, str(version))
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f"{final} exists; pass --overwrite to replace it "
                          "or choose another --version.")
  os.makedirs(output_dir, exist_ok=True)
  # Hidden and not an integer: TF Serving ignores it while it is written.
  tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=output_dir)
  try:
    module = ServingModule(model, max_pixels)
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    write_warmup_requests(os.path.join(tmp, WARMUP_FILE), model_name,
                          model.image_size, max_pixels)
    old = None
    if os.path.exists(final):
      old = tempfile.mkdtemp(prefix=f".old-{version}-", dir=output_dir)
      os.rename(final, os.path.join(old, "v"))
    os.rename(tmp, final)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("Exported version %d to %s", version, final)
  return final


def define_flags():
  """Command-line flags of the export CLI."""
  configurable.gin_flags()
  checkpoints.define_checkpoint_flag()
  flags.DEFINE_string("output_dir", None, "Model base path: versions are its "
                      "integer sub-folders.")
  flags.DEFINE_integer("version", None, "Version to write (default: next "
                       "free integer).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing version.")
  flags.DEFINE_integer("max_pixels", preprocessing.DEFAULT_MAX_PIXELS,
                       "Largest image (height x width) predict_images_bytes "
                       "accepts.")
  flags.DEFINE_string("model_name", client.DEFAULT_MODEL_NAME,
                      "Model name used in the warmup requests.")


def main(argv):
  del argv
  model = cli.load_model_from_flags("output_dir")
  args = flags.FLAGS
  path = export_saved_model(model, args.output_dir, args.version,
                            args.overwrite, args.max_pixels, args.model_name)
  print(f"Exported {path} with signatures {', '.join(SIGNATURES)}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
