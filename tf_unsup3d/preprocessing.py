"""Encoded image files -> model inputs, for training, serving and the demo.

Any JPEG, PNG (8 or 16 bit, grey, grey + alpha, RGB, RGBA), GIF (first
frame) or BMP becomes a `[S, S, 3]` float image in [0, 1]: decoded as RGB
(grey replicated, alpha dropped), optionally cropped (`crop_spec`),
centre-cropped to a square and resized with an antialiasing area filter
(`center_crop_resize`). The training pipeline (`tf_unsup3d.data.datasets`),
the serving signature and the demo all go through these functions, so a
non-square photo is seen the same way by all three.

The pixel count is read from the file header before any pixel is decoded,
so a huge image is rejected without allocating its buffer; the training
data check (`datasets.check_files`) applies the same limit.
"""

import ast
import re

import tensorflow as tf

from tf_unsup3d import shapes

# 4096 x 4096: a 64 MiB RGB buffer at most, decoded and then downsampled.
# The one pixel limit of serving, the demo and the training data.
DEFAULT_MAX_PIXELS = 4096 * 4096

FORMATS = ("jpeg", "png", "gif", "bmp")
_MAGIC = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF8",
    "bmp": b"BM",
}


def _bytes_at(data, offset, length):
  """`length` bytes of scalar string `data` from `offset` as int64 `[length]`."""
  piece = tf.strings.substr(data, offset, length)
  return tf.cast(tf.io.decode_raw(piece, tf.uint8), tf.int64)


def _uint(data, offset, length, big_endian):
  """Unsigned integer of `length` bytes at `offset` (int64 scalar)."""
  digits = _bytes_at(data, offset, length)
  if big_endian:
    digits = tf.reverse(digits, [0])
  weights = tf.constant([256**i for i in range(length)], tf.int64)
  return tf.reduce_sum(digits * weights)


def format_index(data):
  """Index into `FORMATS` of scalar string `data`, or -1 if none matches."""
  with tf.name_scope("format_index"):
    index = tf.constant(-1)
    for i, name in reversed(list(enumerate(FORMATS))):
      magic = _MAGIC[name]
      match = tf.equal(tf.strings.substr(data, 0, len(magic)), magic)
      index = tf.where(match, i, index)
    return index


def header_size(data):
  """(height, width) int64 scalars from the header of an encoded image.

  Reads only the header: JPEG through `tf.image.extract_jpeg_shape`, PNG
  from its IHDR chunk, GIF from its logical screen descriptor, BMP from
  its DIB header. Unknown formats and truncated headers give (0, 0): the
  decoder reports those.
  """
  with tf.name_scope("header_size"):
    data = tf.convert_to_tensor(data, tf.string)
    # Zero padding: a truncated header reads as zeros instead of failing.
    padded = tf.strings.join([data, tf.constant(b"\0" * 32)])

    def jpeg():
      shape = tf.image.extract_jpeg_shape(data, output_type=tf.int64)
      return shape[0], shape[1]

    def png():  # IHDR: width, height as big-endian uint32 at 16 and 20.
      return (_uint(padded, 20, 4, big_endian=True),
              _uint(padded, 16, 4, big_endian=True))

    def gif():  # Logical screen: little-endian uint16 at 6 and 8.
      return (_uint(padded, 8, 2, big_endian=False),
              _uint(padded, 6, 2, big_endian=False))

    def bmp():  # BITMAPINFOHEADER: little-endian int32 at 18 and 22.
      width = _uint(padded, 18, 4, big_endian=False)
      height = _uint(padded, 22, 4, big_endian=False)
      # Height is negative for top-down bitmaps (two's complement).
      height = tf.where(height >= 2**31, 2**32 - height, height)
      return height, width

    def unknown():
      zero = tf.constant(0, tf.int64)
      return zero, zero

    index = format_index(data)
    return tf.switch_case(tf.where(index < 0, len(FORMATS), index),
                          [jpeg, png, gif, bmp, unknown])


def validate_crop_spec(crop_spec):
  """Checks a crop setting; returns None, an int or a (y0, x0, h, w) tuple.

  Args:
    crop_spec: None (no crop), a positive int (centre square of that side,
      at most the image's shorter side) or four ints (y0, x0, h, w) in
      pixels of the original image, y0, x0 >= 0 and h, w > 0.

  Raises:
    ValueError: naming the setting, for anything else.
  """
  if crop_spec is None:
    return None
  if isinstance(crop_spec, int) and not isinstance(crop_spec, bool):
    if crop_spec <= 0:
      raise ValueError(f"crop_spec {crop_spec}: a centre crop size must be "
                       "positive.")
    return crop_spec
  box = tuple(crop_spec) if isinstance(crop_spec, (list, tuple)) else ()
  if (len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool)
                               for v in box)
      or box[0] < 0 or box[1] < 0 or box[2] <= 0 or box[3] <= 0):
    raise ValueError(f"crop_spec {crop_spec!r} must be None, a positive int "
                     "(centre crop) or four ints (y0, x0, h, w) with y0, x0 "
                     ">= 0 and h, w > 0.")
  return box


def crop_fits(crop_spec, height, width):
  """Whether `crop_spec` (see `validate_crop_spec`) fits a height x width image.

  None and centre crops always fit (a centre crop larger than the image
  takes its shorter side); a box must lie inside the image.
  """
  crop_spec = validate_crop_spec(crop_spec)
  if not isinstance(crop_spec, tuple):
    return True
  y0, x0, h, w = crop_spec
  return y0 + h <= height and x0 + w <= width


def crop(image, crop_spec):
  """Crops `[H, W, C]` by `crop_spec` (None, centre size or (y0, x0, h, w)).

  A box outside the image raises `InvalidArgumentError`; callers check
  `crop_fits` first to say which image and which crop.
  """
  crop_spec = validate_crop_spec(crop_spec)
  if crop_spec is None:
    return image
  if isinstance(crop_spec, int):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    size = tf.minimum(crop_spec, tf.minimum(height, width))
    return tf.image.crop_to_bounding_box(
        image, (height - size) // 2, (width - size) // 2, size, size)
  y0, x0, h, w = crop_spec
  return tf.image.crop_to_bounding_box(image, y0, x0, h, w)


def center_crop_resize(image, size, crop_spec=None, method="area"):
  """`[H, W, C]` -> `[size, size, C]` float32: crop, centre square, resize.

  The one geometric preprocessing of training, serving and the demo:
  `crop_spec` (None for serving and the demo) is applied first, then the
  centre square of the result (a non-square photo is cropped, never
  squashed), then an antialiased resize.

  Args:
    image: `[H, W, C]`, any real dtype, values kept as they are.
    size: output side S in pixels.
    crop_spec: see `validate_crop_spec`.
    method: 'area' for images; 'bilinear' (antialiased, as PIL's bilinear
      resize the reference uses) for ground-truth depth.
  """
  with tf.name_scope("center_crop_resize"):
    image = crop(image, crop_spec)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    image = tf.image.crop_to_bounding_box(
        image, (height - side) // 2, (width - side) // 2, side, side)
    # Already the right size: no resampling, so S x S files pass exactly.
    resized = tf.cond(
        tf.equal(side, size), lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, [size, size], method=method,
                                antialias=True))
    return tf.ensure_shape(resized, [size, size, image.shape[-1]])


def decode_rgb(data, max_pixels=DEFAULT_MAX_PIXELS):
  """One encoded image (scalar string) -> `[H, W, 3]` float32 in [0, 1].

  Raises (`tf.errors.InvalidArgumentError`, eagerly or when the graph runs)
  with a message saying why: not an image, or more than `max_pixels`
  pixels (checked on the header before decoding, and again after).
  """
  with tf.name_scope("decode_rgb"):
    data = tf.convert_to_tensor(data, tf.string)
    length = tf.strings.length(data)
    known = format_index(data) >= 0
    check_format = tf.debugging.Assert(known, [
        "Not an image: expected JPEG, PNG, GIF or BMP bytes; got",
        length, "bytes starting with", tf.strings.substr(data, 0, 12)])
    with tf.control_dependencies([check_format]):
      height, width = header_size(data)

    def check_size(height, width):
      pixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
      return tf.debugging.Assert(pixels <= float(max_pixels), [
          "Image too large:", height, "x", width, "pixels, more than "
          "max_pixels =", tf.constant(int(max_pixels), tf.int64),
          "; downscale it before sending"])

    with tf.control_dependencies([check_size(height, width)]):
      image = tf.io.decode_image(data, channels=3, dtype=tf.float32,
                                 expand_animations=False)
    shape = tf.shape(image, out_type=tf.int64)
    # The header may understate the size (e.g. a GIF frame): check again.
    with tf.control_dependencies([check_size(shape[0], shape[1])]):
      image = tf.identity(image)
    image.set_shape([None, None, 3])
    return image


def _readable(item):
  """One summarized `tf.debugging.Assert` item as text: a bytes literal
  (b'...') decoded, unprintable characters escaped."""
  if re.fullmatch(r"""b(['"]).*\1""", item, re.DOTALL):
    try:
      item = ast.literal_eval(item).decode("utf-8", "backslashreplace")
    except (ValueError, SyntaxError):
      pass
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in item)


def error_reason(error):
  """One readable line saying why an image was refused.

  `decode_rgb`'s eager `tf.debugging.Assert` errors carry the condition
  before "Summarized data:" and the message after it, one item a line
  (strings as b'...' literals): the items are joined as plain text. A
  decoder's own error loses TensorFlow's function and op labels.
  """
  reason = (getattr(error, "message", None) or str(error)).strip()
  if "Summarized data:" in reason:
    items = reason.split("Summarized data:", 1)[1].strip().splitlines()
    return " ".join(_readable(i.strip()) for i in items if i.strip())
  reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", reason)
  reason = (reason.splitlines() or [""])[0]
  return re.sub(r"\s*\[Op:\w+\](\s*name:.*)?$", "", reason).strip()


def decode_image(data, size, max_pixels=DEFAULT_MAX_PIXELS):
  """One encoded image (scalar string) -> `[size, size, 3]` float32 in [0, 1].

  `decode_rgb` then `center_crop_resize`; raises as `decode_rgb` does.
  """
  with tf.name_scope("decode_image"):
    return center_crop_resize(decode_rgb(data, max_pixels), size)


def decode_images(data, size, max_pixels=DEFAULT_MAX_PIXELS):
  """`[N]` encoded images -> `[N, size, size, 3]` float32 in [0, 1]."""
  with tf.name_scope("decode_images"):
    data = tf.convert_to_tensor(data, tf.string)
    shapes.check_shape(data, "data", ("N",), "string tensor")
    return tf.map_fn(
        lambda d: decode_image(d, size, max_pixels), data,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
