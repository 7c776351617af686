r"""gRPC and REST clients for the unsup3d model on TensorFlow Serving.

    python -m tf_unsup3d.export.serving.client --server=localhost:8500 \
        --protocol=grpc face1.jpg face2.png [--output=outputs.npz]
    python -m tf_unsup3d.export.serving.client --server=localhost:8501 \
        --protocol=rest face1.jpg
    python -m tf_unsup3d.export.serving.client --detect_faces \
        [--no_face=centre] photo.jpg

Sends the encoded files to the `predict_images_bytes` signature (the server
decodes, centre-crops and resizes them) and prints every output's shape and
range; `--output` saves them as an `.npz`. `--detect_faces` and `--boxes`
frame each photo first exactly as the demo does (`tf_unsup3d.cropping`) and
send the crop as a PNG, so the server sees what the demo would have used.
Request building and response parsing are pure functions, so they are
tested against the exported model without a server.
"""

import base64
import json
import urllib.request

from absl import app
from absl import flags
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tf_unsup3d import cropping
from tf_unsup3d import preprocessing
from tf_unsup3d import shapes

IMAGES_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "predict_images_bytes"
# Signature name -> its single input's name.
INPUT_NAMES = {IMAGES_SIGNATURE: "images", BYTES_SIGNATURE: "image_bytes"}
DEFAULT_MODEL_NAME = "unsup3d"
# The outputs hold about 18 float32 per pixel of an S x S image (1.2 MB per
# image at S = 128, 4.7 MB at 256): room for a batch of 64 at any S.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


def _signature_for(inputs, signature_name):
  """Default signature: bytes for a list of encoded files, else images."""
  if signature_name:
    return signature_name
  if isinstance(inputs, (list, tuple)) and inputs and isinstance(
      inputs[0], bytes):
    return BYTES_SIGNATURE
  return IMAGES_SIGNATURE


def _input_array(inputs, signature_name, image_size=None):
  """The request's input array, its shape checked.

  Images must be `[N, S, S, 3]`: S is `image_size` when given (the served
  model's), else any square size (the server checks its own).
  """
  if signature_name == BYTES_SIGNATURE:
    array = np.asarray(list(inputs), dtype=object)
    if array.ndim != 1 or not all(isinstance(b, bytes) for b in array):
      raise ValueError("predict_images_bytes takes a list of encoded image "
                       "files (bytes).")
    return array
  array = np.asarray(inputs, np.float32)
  note = "floats in [0, 1]"
  if image_size is not None:
    shapes.check_shape(array, "images", ("N", image_size, image_size, 3),
                       note)
    return array
  shapes.check_shape(array, "images", ("N", "S", "S", 3), note)
  if array.shape[1] != array.shape[2]:
    raise ValueError(f"images must be [N, S, S, 3] {note}, square (S the "
                     f"model's image size), got shape {array.shape}.")
  return array


def make_predict_request(inputs, model_name=DEFAULT_MODEL_NAME,
                         signature_name=None, version=None, image_size=None):
  """A `PredictRequest` for either signature.

  Args:
    inputs: `[N, S, S, 3]` float images in [0, 1] (signature
      `serving_default`, S the model's image size: 64, 128 or 256) or a
      list of N encoded JPEG/PNG/GIF/BMP files as bytes
      (`predict_images_bytes`, any size: the server resizes them to S).
    model_name: the name the server gives the model (models.config).
    signature_name: default chosen from the type of `inputs`.
    version: optional integer model version; default the latest.
    image_size: the model's S, if known: images of another size are
      refused here rather than by the server. None: any square size.

  Returns:
    `predict_pb2.PredictRequest`.
  """
  signature_name = _signature_for(inputs, signature_name)
  if signature_name not in INPUT_NAMES:
    raise ValueError(f"Unknown signature {signature_name!r}; the model has "
                     f"{sorted(INPUT_NAMES)}.")
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = int(version)
  array = _input_array(inputs, signature_name, image_size)
  request.inputs[INPUT_NAMES[signature_name]].CopyFrom(
      tf.make_tensor_proto(array))
  return request


def request_inputs(request):
  """Signature name and `{input name: np.ndarray}` of a `PredictRequest`."""
  return (request.model_spec.signature_name or IMAGES_SIGNATURE,
          {k: tf.make_ndarray(v) for k, v in request.inputs.items()})


def make_predict_response(outputs, model_name=DEFAULT_MODEL_NAME,
                          signature_name=IMAGES_SIGNATURE):
  """The `PredictResponse` a server sends for `{name: array}` outputs."""
  response = predict_pb2.PredictResponse()
  response.model_spec.name = model_name
  response.model_spec.signature_name = signature_name
  for key, value in outputs.items():
    response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
  return response


def parse_predict_response(response):
  """`{output name: np.ndarray}` of a `PredictResponse`."""
  return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def rest_payload(inputs, signature_name=None, image_size=None):
  """JSON-serialisable body for `POST /v1/models/NAME:predict` (columnar).

  `inputs` and `image_size` as `make_predict_request`'s. Encoded files
  travel base64 as `{"b64": ...}`: TF Serving decodes those for inputs
  whose name ends in `_bytes`, as `image_bytes` does.
  """
  signature_name = _signature_for(inputs, signature_name)
  array = _input_array(inputs, signature_name, image_size)
  if signature_name == BYTES_SIGNATURE:
    values = [{"b64": base64.b64encode(b).decode("ascii")} for b in array]
  else:
    values = array.tolist()
  return {"signature_name": signature_name,
          "inputs": {INPUT_NAMES[signature_name]: values}}


def rest_payload_inputs(payload):
  """Signature name and `{input name: np.ndarray}` of a `rest_payload` body
  (what the server does with it)."""
  signature_name = payload.get("signature_name", IMAGES_SIGNATURE)
  inputs = {}
  for key, values in payload["inputs"].items():
    if values and isinstance(values[0], dict):
      inputs[key] = np.array([base64.b64decode(v["b64"]) for v in values],
                             dtype=object)
    else:
      inputs[key] = np.asarray(values, np.float32)
  return signature_name, inputs


def rest_response(outputs):
  """The JSON body a server answers a columnar request with."""
  return {"outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()}}


def parse_rest_response(body, output_names=None):
  """`{output name: np.ndarray (float32)}` of a REST predict response.

  Accepts the columnar (`"outputs"`) and the row (`"predictions"`) format,
  as a dict or a JSON string. A columnar answer with a single output comes
  unnamed: pass `output_names` to name it.
  """
  if isinstance(body, (str, bytes)):
    body = json.loads(body)
  if "error" in body:
    raise RuntimeError(f"Server error: {body['error']}")
  if "outputs" in body:
    outputs = body["outputs"]
    if not isinstance(outputs, dict):
      outputs = {(output_names or ["output"])[0]: outputs}
    return {k: np.asarray(v, np.float32) for k, v in outputs.items()}
  rows = body["predictions"]
  if rows and not isinstance(rows[0], dict):
    return {(output_names or ["output"])[0]: np.asarray(rows, np.float32)}
  return {k: np.asarray([row[k] for row in rows], np.float32)
          for k in rows[0]} if rows else {}


class GrpcClient:
  """`PredictionService` over gRPC (TF Serving's port 8500 by default)."""

  def __init__(self, target="localhost:8500", model_name=DEFAULT_MODEL_NAME,
               timeout_s=60.0):
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    self._channel = grpc.insecure_channel(target, options=options)
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(
        self._channel)
    self.model_name = model_name
    self.timeout_s = timeout_s

  def predict(self, inputs, signature_name=None, version=None,
              image_size=None):
    """Images or encoded files -> `{output name: np.ndarray}`
    (`make_predict_request`'s arguments)."""
    request = make_predict_request(inputs, self.model_name, signature_name,
                                   version, image_size)
    return parse_predict_response(
        self._stub.Predict(request, timeout=self.timeout_s))

  def close(self):
    self._channel.close()


def rest_predict(inputs, host="localhost:8501", model_name=DEFAULT_MODEL_NAME,
                 signature_name=None, version=None, timeout_s=60.0,
                 image_size=None):
  """POSTs to `http://host/v1/models/NAME[/versions/V]:predict`
  (`rest_payload`'s inputs and image_size)."""
  path = f"/v1/models/{model_name}"
  if version is not None:
    path += f"/versions/{int(version)}"
  body = json.dumps(rest_payload(inputs, signature_name,
                                 image_size)).encode("utf-8")
  request = urllib.request.Request(
      f"http://{host}{path}:predict", data=body,
      headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=timeout_s) as answer:
    return parse_rest_response(answer.read())


def framed_files(paths, framing, max_pixels=preprocessing.DEFAULT_MAX_PIXELS):
  """Encoded files to send: each photo framed as the demo would frame it.

  Args:
    paths: image files.
    framing: a `cropping.Framing`; when inactive the files go as they are.
    max_pixels: larger photos are refused before decoding, as the server's
      signature would.

  Returns:
    (list of bytes, [(path, description)] sent, [(path, reason)] skipped).
    A framed photo travels as a lossless PNG of its crop (16 bits per
    channel), which the server then centre-crops (a no-op on a square) and
    resizes, like the demo.
  """
  data, sent, skipped = [], [], []
  for path in paths:
    with open(path, "rb") as f:
      raw = f.read()
    if not framing.active:
      data.append(raw)
      sent.append((path, "as is"))
      continue
    try:
      photo = preprocessing.decode_rgb(raw, max_pixels).numpy()
      photo, how = framing(path, photo)
    except (tf.errors.OpError, ValueError) as e:
      skipped.append((path, preprocessing.error_reason(e)))
      continue
    pixels = np.round(np.clip(photo, 0.0, 1.0) * 65535.0).astype(np.uint16)
    data.append(tf.io.encode_png(pixels).numpy())
    sent.append((path, how))
  return data, sent, skipped


def define_flags():
  """Command-line flags of the client CLI."""
  flags.DEFINE_string("server", "localhost:8500",
                      "host:port (8500 gRPC, 8501 REST by default).")
  flags.DEFINE_enum("protocol", "grpc", ["grpc", "rest"], "Wire protocol.")
  flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME,
                      "Model name in models.config.")
  flags.DEFINE_integer("model_version", None, "Model version (default: the "
                       "latest).")
  flags.DEFINE_string("output", None, "Optional .npz for the outputs.")
  cropping.define_flags()


def main(argv):
  files = argv[1:]
  if not files:
    raise app.UsageError("Give one or more image files.")
  args = flags.FLAGS
  try:
    framing = cropping.framing_from_flags()
  except (ImportError, OSError, cropping.BoxError) as e:
    raise app.UsageError(str(e)) from None
  data, sent, skipped = framed_files(files, framing)
  for path, reason in skipped:
    print(f"skipped {path}: {reason}")
  if not data:
    raise app.UsageError("No image left to send.")
  for path, how in sent:
    print(f"sending {path} ({how})")
  if args.protocol == "grpc":
    client = GrpcClient(args.server, args.model_name)
    outputs = client.predict(data, BYTES_SIGNATURE, args.model_version)
    client.close()
  else:
    outputs = rest_predict(data, args.server, args.model_name,
                           BYTES_SIGNATURE, args.model_version)
  for key, value in sorted(outputs.items()):
    print(f"{key:24s} {str(value.shape):20s} [{value.min():+.3f}, "
          f"{value.max():+.3f}]")
  if args.output:
    np.savez(args.output, **outputs)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
