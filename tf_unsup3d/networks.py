"""The paper's networks as Keras subclassed models (DESIGN section 5).

Layer for layer as the reference PyTorch code: no conv biases, PyTorch's
explicit paddings (ZeroPadding2D + 'valid' convolutions, and 'valid'
transposed convolutions cropped by one pixel for padding=1), GroupNorm with
4 channels per group (epsilon 1e-5) and PyTorch's default initialisation.
Inputs are channels-last SxS images in [-1, 1], S in IMAGE_SIZES; S = 64 is
the paper's architecture, each doubling adds one stride-2 stage per
encoder and decoder (channels capped at 8 nf).
"""

import os

from tf_unsup3d import shapes
from tf_unsup3d import value_ranges
from tf_unsup3d.configurable import keras_configurable
from tf_unsup3d.tools import torch_reader
import keras
import numpy as np
import tensorflow as tf

# PyTorch's default conv init, kaiming_uniform(a=sqrt(5)), is U(+-1/sqrt(fan_in)).
# VarianceScaling(1/3, fan_in, uniform) has limit sqrt(3 * (1/3) / fan_in), and
# Keras' fan_in (kh * kw * kernel.shape[-2]) is PyTorch's for both Conv2D
# (kh, kw, cin, cout) and Conv2DTranspose (kh, kw, cout, cin) kernels.
def torch_default_init():
  """Initializer equal to PyTorch's default for Conv2d and ConvTranspose2d."""
  return keras.initializers.VarianceScaling(
      scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _conv(filters, kernel, stride=1, padding=0, dtype=None, init=None):
  layers = [keras.layers.ZeroPadding2D(padding, dtype=dtype)] if padding else []
  layers.append(keras.layers.Conv2D(
      filters, kernel, strides=stride, padding="valid", use_bias=False,
      kernel_initializer=init or torch_default_init(), dtype=dtype))
  return layers


def _output(filters, kernel, padding=0, activation=None, zero_init=False):
  """The last convolution of a network (+ activation), always in float32.

  Under a mixed bfloat16 policy everything else computes in bfloat16, whose
  8-bit mantissa would quantise depth to ~5e-4 scene units, a sixth of a
  pixel's width at depth 1: the normals, differences of neighbouring depths,
  would be noise. These layers are a small share of the cost.
  """
  layers = _conv(filters, kernel, 1, padding, dtype="float32",
                 init=keras.initializers.Zeros() if zero_init else None)
  if activation:
    layers.append(keras.layers.Activation(activation, dtype="float32"))
  return layers


def _deconv(filters, kernel, stride=1, padding=0):
  """ConvTranspose2d(k, stride, padding): 'valid' output cropped by padding."""
  layers = [keras.layers.Conv2DTranspose(
      filters, kernel, strides=stride, padding="valid", use_bias=False,
      kernel_initializer=torch_default_init())]
  if padding:
    layers.append(keras.layers.Cropping2D(padding))
  return layers


def _gn(channels):
  return [keras.layers.GroupNormalization(groups=channels // 4, epsilon=1e-5)]


def _relu():
  return [keras.layers.ReLU()]


def _lrelu():
  return [keras.layers.LeakyReLU(negative_slope=0.2)]


def _check_nf(nf):
  if nf <= 0 or nf % 4:
    raise ValueError(f"nf must be a positive multiple of 4 (GroupNorm uses 4 "
                     f"channels per group), got {nf}.")


IMAGE_SIZES = (64, 128, 256)


def _check_image_size(image_size):
  if image_size not in IMAGE_SIZES:
    raise ValueError(f"image_size must be one of {IMAGE_SIZES} (the networks "
                     f"have one stride-2 stage per halving down to 4x4), got "
                     f"{image_size}.")


def _check_input(x, name, image_size):
  s = image_size
  shapes.check_shape(x, f"{name} input", ("B", s, s, "C"),
                     f"images ({s}x{s}: this network's image_size)",
                     unknown_ok=True)


def _network_input_shape(input_shape, image_size):
  """The SxS shape to build with; `call` rejects other sizes clearly."""
  return (None, image_size, image_size, input_shape[-1])


def _width(nf, image_size, resolution):
  """Channels of the stage at `resolution` (of an SxS input).

  nf at S/2, doubling per halving and capped at 8 nf (nf at full
  resolution too): at S = 64, nf, 2nf, 4nf, 8nf at 32, 16, 8, 4, the
  paper's ladder; larger S repeat 8 nf at the coarse end.
  """
  return nf * min(max(image_size // (2 * resolution), 1), 8)


def _halvings(image_size):
  """Resolutions after each stride-2 stage: S/2, S/4, ..., 4."""
  sizes, r = [], image_size // 2
  while r >= 4:
    sizes.append(r)
    r //= 2
  return sizes


def _down(nf, zdim, image_size):
  """The shared encoder of EDDeconv and ConfNet: SxS -> 1x1 x zdim.

  Stride-2 convs to S/2 ... 4, GroupNorm in every stage but the last.
  """
  sizes = _halvings(image_size)
  layers = []
  for r in sizes:
    c = _width(nf, image_size, r)
    layers += _conv(c, 4, 2, 1) + (_gn(c) if r > 4 else []) + _lrelu()
  return layers + _conv(zdim, 4) + _relu()


def _up_from_code(nf, image_size):
  """1x1 code -> 4x4 features: the valid 4x4 deconv (no GroupNorm)."""
  return _deconv(_width(nf, image_size, 4), 4) + _relu()


def _up_stage(nf, image_size, resolution):
  """x2 deconv to `resolution`, GroupNorm, ReLU."""
  c = _width(nf, image_size, resolution)
  return _deconv(c, 4, 2, 1) + _gn(c) + _relu()


class Encoder(keras.Model):
  """Image `[B, S, S, C]` in [-1, 1] -> `[B, cout]` in [-1, 1] (tanh).

  Light (cout 4) and view (cout 6) encoders, nf 32 in the paper; S in
  `IMAGE_SIZES` (64 is the paper's).
  """

  def __init__(self, cout, nf=64, image_size=64, **kwargs):
    super().__init__(**kwargs)
    _check_image_size(image_size)
    self.cout = cout
    self.image_size = image_size
    layers = []
    for r in _halvings(image_size):
      layers += _conv(_width(nf, image_size, r), 4, 2, 1) + _relu()
    self.body = keras.Sequential(
        layers + _conv(nf * 8, 4) + _relu() +
        _output(cout, 1, activation="tanh"))

  def build(self, input_shape):
    self.body.build(_network_input_shape(input_shape, self.image_size))

  def call(self, x, training=False):
    _check_input(x, self.name, self.image_size)
    return tf.reshape(self.body(x, training=training), [-1, self.cout])


class EDDeconv(keras.Model):
  """Encoder-decoder: `[B, S, S, C]` in [-1, 1] -> `[B, S, S, cout]`.

  Depth (cout 1, no activation) and albedo (cout 3, tanh in [-1, 1]) nets;
  zdim 256 and nf 64 in the paper; S in `IMAGE_SIZES` (64 is the paper's).
  `zero_init_output` starts the last convolution at zero, so that the
  network's first output is 0 everywhere (the paper: PyTorch's default
  init throughout).
  """

  def __init__(self, cout, zdim=256, nf=64, activation=None, image_size=64,
               zero_init_output=False, **kwargs):
    super().__init__(**kwargs)
    _check_nf(nf)
    _check_image_size(image_size)
    if activation not in (None, "tanh"):
      raise ValueError(f"activation must be None or 'tanh', got {activation}.")
    self.image_size = s = image_size
    c4 = _width(nf, s, 4)
    up = _up_from_code(nf, s) + _conv(c4, 3, 1, 1) + _relu()
    for r in reversed(_halvings(s)[:-1]):  # 8 ... S/2
      c = _width(nf, s, r)
      up += _up_stage(nf, s, r) + _conv(c, 3, 1, 1) + _gn(c) + _relu()
    up += ([keras.layers.UpSampling2D(2, interpolation="nearest")] +
           _conv(nf, 3, 1, 1) + _gn(nf) + _relu() +
           _conv(nf, 5, 1, 2) + _gn(nf) + _relu() +
           _output(cout, 5, 2, activation, zero_init_output))
    self.body = keras.Sequential(_down(nf, zdim, s) + up)

  def build(self, input_shape):
    self.body.build(_network_input_shape(input_shape, self.image_size))

  def call(self, x, training=False):
    _check_input(x, self.name, self.image_size)
    return self.body(x, training=training)


class ConfNet(keras.Model):
  """Confidence maps: `[B, S, S, C]` -> (`[B, S, S, cout]`,
  `[B, S/d, S/d, cout]`), d = `perc_downsample`.

  Both softplus (> 0): the photometric and the perceptual confidence
  (at the perceptual features' resolution: d = 4 for VGG16 relu3_3, 8 for
  relu4_3), channel 0 for the original, 1 for the mirrored branch. The
  trunk decodes to S/d, where the perceptual head (`quarter_head`, a 3x3
  conv) reads it; the full head doubles d times more. zdim 128 and nf 64
  in the paper; S in `IMAGE_SIZES` (64 is the paper's).
  """

  def __init__(self, cout=2, zdim=128, nf=64, image_size=64,
               perc_downsample=4, **kwargs):
    super().__init__(**kwargs)
    _check_nf(nf)
    _check_image_size(image_size)
    if perc_downsample not in (4, 8):
      raise ValueError(f"perc_downsample must be 4 or 8, got "
                       f"{perc_downsample}.")
    self.image_size = s = image_size
    self.perc_downsample = perc_downsample
    ups = list(reversed(_halvings(s)[:-1])) + [s]  # 8, ..., S/2, S
    trunk_sizes = [r for r in ups if r <= s // perc_downsample]
    head_sizes = [r for r in ups if r > s // perc_downsample]
    trunk = _down(nf, zdim, s) + _up_from_code(nf, s)
    for r in trunk_sizes:
      trunk += _up_stage(nf, s, r)
    full = []
    for r in head_sizes:
      full += _up_stage(nf, s, r)
    self.trunk = keras.Sequential(trunk)
    self.full_head = keras.Sequential(full + _output(cout, 5, 2, "softplus"))
    self.quarter_head = keras.Sequential(_output(cout, 3, 1, "softplus"))

  def build(self, input_shape):
    input_shape = _network_input_shape(input_shape, self.image_size)
    self.trunk.build(input_shape)
    features_shape = self.trunk.compute_output_shape(input_shape)
    self.full_head.build(features_shape)
    self.quarter_head.build(features_shape)

  def call(self, x, training=False):
    _check_input(x, self.name, self.image_size)
    features = self.trunk(x, training=training)
    return (self.full_head(features, training=training),
            self.quarter_head(features, training=training))


KERAS_VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def torch_preprocess(images):
  """[-1, 1] RGB -> torchvision's VGG input: [0, 1], ImageNet mean/std."""
  x = value_ranges.to_unit(images)
  return (x - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)


def caffe_preprocess(images):
  """[-1, 1] RGB -> Keras' ImageNet VGG input: BGR, 0..255, mean-subtracted."""
  x = (images + 1.0) * 127.5
  return tf.reverse(x, axis=[-1]) - tf.constant(_CAFFE_BGR_MEAN)


def keras_cache_vgg16_path():
  """Where Keras caches its ImageNet VGG16 (no top) weights."""
  home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"),
                                                   ".keras"))
  return os.path.join(home, "models", KERAS_VGG16_FILE)


def torch_hub_vgg16_path():
  """Where torchvision caches its ImageNet VGG16 weights.

  torch.hub's rule: `$TORCH_HOME/hub/checkpoints`, TORCH_HOME defaulting to
  `$XDG_CACHE_HOME/torch`, and that to `~/.cache/torch`.
  """
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  home = os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")
  return os.path.join(home, "hub", "checkpoints", TORCHVISION_VGG16_FILE)


# torchvision's vgg16().features indices of the convolutions (ReLUs and
# max-pools in between), by the Keras VGG16 layer they fill, and the torch
# weight shape [out, in, kh, kw] each must have; relu3_3 needs the first
# seven, relu4_3 all ten.
_TORCHVISION_CONVS = (
    ("block1_conv1", 0, (64, 3)), ("block1_conv2", 2, (64, 64)),
    ("block2_conv1", 5, (128, 64)), ("block2_conv2", 7, (128, 128)),
    ("block3_conv1", 10, (256, 128)), ("block3_conv2", 12, (256, 256)),
    ("block3_conv3", 14, (256, 256)), ("block4_conv1", 17, (512, 256)),
    ("block4_conv2", 19, (512, 512)), ("block4_conv3", 21, (512, 512)))

# Perceptual feature layer -> (its Keras VGG16 layer, convolutions up to it,
# downsampling factor of its features).
VGG_LAYERS = {"relu3_3": ("block3_conv3", 7, 4),
              "relu4_3": ("block4_conv3", 10, 8)}


def _check_vgg_layer(layer):
  if layer not in VGG_LAYERS:
    raise ValueError(f"VGG layer must be one of {sorted(VGG_LAYERS)}, got "
                     f"{layer!r}.")


def vgg_downsample(layer):
  """Feature downsampling of VGG16 `layer`: 4 for relu3_3, 8 for relu4_3."""
  _check_vgg_layer(layer)
  return VGG_LAYERS[layer][2]


def torchvision_vgg16_weights(state_dict, source="the state dict",
                              layer="relu3_3"):
  """Keras weights of torchvision's VGG16 convolutions up to `layer`.

  Args:
    state_dict: torchvision `vgg16().state_dict()` as NumPy arrays:
      `features.N.weight` [out, in, 3, 3] and `features.N.bias` [out] for
      N in 0, 2, 5, 7, 10, 12, 14 (relu3_3), and 17, 19, 21 (relu4_3);
      other entries (deeper layers, the classifier) are ignored.
    source: what to call the state dict in errors (its file).
    layer: the deepest feature layer used, a key of `VGG_LAYERS`.

  Returns:
    Keras VGG16 layer name -> (kernel [3, 3, in, out], bias [out]), float32.

  Raises:
    ValueError: a tensor is missing or mis-shaped; names each one.
  """
  if not isinstance(state_dict, dict):
    raise ValueError(f"{source} holds a {type(state_dict).__name__}, not "
                     "torchvision's VGG16 state dict.")
  _check_vgg_layer(layer)
  weights, problems = {}, []
  convs = _TORCHVISION_CONVS[:VGG_LAYERS[layer][1]]
  for layer, index, (cout, cin) in convs:
    tensors = []
    for key, shape in ((f"features.{index}.weight", (cout, cin, 3, 3)),
                       (f"features.{index}.bias", (cout,))):
      value = state_dict.get(key)
      if value is None:
        problems.append(f"{key} is missing (expected {shape} for {layer})")
      elif np.shape(value) != shape:
        problems.append(f"{key} has shape {np.shape(value)}, expected "
                        f"{shape} for {layer}")
      else:
        tensors.append(np.asarray(value, np.float32))
    if len(tensors) == 2:
      # [out, in, kh, kw] -> [kh, kw, in, out]; both frameworks' Conv2d is
      # a cross-correlation, so no spatial flip.
      weights[layer] = (tensors[0].transpose(2, 3, 1, 0), tensors[1])
  if problems:
    raise ValueError(f"{source} is not torchvision's VGG16: " +
                     "; ".join(problems) + ".")
  return weights


def _vgg16_files_help():
  return (
      "Nothing is downloaded at run time. The perceptual loss needs one of "
      f"two files: torchvision's {TORCHVISION_VGG16_FILE} (the paper's "
      f"VGG16), in {os.path.dirname(torch_hub_vgg16_path())} (torch.hub's "
      "cache; TORCH_HOME moves it), or Keras' "
      f"{KERAS_VGG16_FILE} (a Caffe conversion), in "
      f"{os.path.dirname(keras_cache_vgg16_path())} (the Keras cache; "
      "KERAS_HOME moves it); or name a file with gin "
      "`VGGFeatures.weights_path = '/path/to/file'`. To train without the "
      "perceptual loss set gin `Unsup3D.lam_perc = 0.0`.")


_WEIGHTS_NAMES = ("imagenet", "keras", "torchvision")
_TORCH_SUFFIXES = (".pth", ".pt")


def vgg16_weights_source(weights="imagenet", weights_path=None):
  """The file `VGGFeatures` loads and the preprocessing that fits it.

  Args:
    weights, weights_path: as `VGGFeatures` takes them.

  Returns:
    (path or None for random weights, 'torchvision' or 'keras' file format,
    auto preprocessing 'torch' or 'caffe').

  Raises:
    ValueError: an unknown `weights`, or a file that does not fit it.
    FileNotFoundError: no weights file; names both files and where each goes.
  """
  if weights is None:
    return None, None, "torch"
  if not isinstance(weights, str):
    raise ValueError("weights must be 'imagenet', 'keras', 'torchvision', a "
                     f"file path or None, got {weights!r}.")
  if weights not in _WEIGHTS_NAMES:
    weights, weights_path = "file", weights
  if weights_path:
    candidates = [weights_path]
  else:
    keras_file, torch_file = keras_cache_vgg16_path(), torch_hub_vgg16_path()
    candidates = {"imagenet": [keras_file, torch_file], "keras": [keras_file],
                  "torchvision": [torch_file]}[weights]
  path = next((c for c in candidates if os.path.isfile(c)), None)
  if path is None:
    raise FileNotFoundError(
        f"VGG16 ImageNet weights (weights={weights!r}) not found at "
        f"{' or '.join(candidates)}. {_vgg16_files_help()}")
  file_format = ("torchvision" if path.endswith(_TORCH_SUFFIXES) else "keras")
  if weights == "keras" and file_format != "keras":
    raise ValueError(f"weights='keras' needs Keras' .h5 file, got {path}.")
  if weights == "torchvision" and file_format != "torchvision":
    raise ValueError(f"weights='torchvision' needs torchvision's .pth state "
                     f"dict, got {path}.")
  # Keras' own file is the Caffe conversion; any other .h5 named explicitly
  # is taken to hold converted torchvision weights (the paper's inputs).
  caffe = weights == "keras" or (weights == "imagenet" and not weights_path and
                                 path == keras_cache_vgg16_path())
  return path, file_format, "caffe" if caffe else "torch"


@keras_configurable
class VGGFeatures(keras.Model):
  """Frozen VGG16 up to `layer` for the perceptual loss.

  `call(images)` maps `[B, H, W, 3]` images in [-1, 1] to `[B, H/4, W/4, 256]`
  features at `layer='relu3_3'` (the paper's), or `[B, H/8, W/8, 512]` at
  'relu4_3' (gin: `Unsup3D.vgg_layer`, which passes it on and sizes the
  perceptual confidence map to match). Weights are never downloaded. The paper's VGG16 is torchvision's
  ImageNet model (`vgg16-397923af.pth`: RGB in [0, 1] normalised by the
  ImageNet mean and std, DESIGN section 1); Keras' ImageNet VGG16 was
  converted from Caffe and expects Caffe inputs (BGR, 0..255,
  mean-subtracted), with different feature scales.

  `weights` (gin: `Unsup3D.vgg_weights`, which passes it on):
    'imagenet' (default): `weights_path` if set, else Keras' cache file
      (`keras_cache_vgg16_path`), else torchvision's torch.hub cache file
      (`torch_hub_vgg16_path`). Keras' file comes first so that runs which
      used it keep their features.
    'torchvision': the paper's VGG16, `weights_path` or the torch.hub file.
    'keras': Keras' Caffe-converted VGG16, `weights_path` or its cache file.
    a file path: `.pth`/`.pt` is a torchvision state dict (read by the
      restricted unpickler of `tf_unsup3d.tools.torch_reader`, which runs no
      code from it), anything else Keras' `.h5` layout.
    None: random weights (tests).
  A missing file raises FileNotFoundError naming both files and where each
  goes. `preprocessing='auto'` gives 'caffe' to Keras' file (found in its
  cache or under 'keras') and 'torch' to everything else: torchvision
  weights, random ones, and an explicit `.h5` (taken to be converted
  torchvision weights).
  """

  def __init__(self, weights="imagenet", weights_path=None,
               preprocessing="auto", layer="relu3_3", **kwargs):
    super().__init__(**kwargs)
    _check_vgg_layer(layer)
    if preprocessing not in ("auto", "torch", "caffe"):
      raise ValueError("preprocessing must be 'auto', 'torch' or 'caffe', got "
                       f"{preprocessing!r}.")
    path, file_format, auto = vgg16_weights_source(weights, weights_path)
    vgg = keras.applications.VGG16(include_top=False, weights=None,
                                   input_shape=(None, None, 3))
    if file_format == "keras":
      vgg.load_weights(path)
    elif file_format == "torchvision":
      state = torch_reader.load_torch_file(path)
      for name, (kernel, bias) in torchvision_vgg16_weights(
          state, source=path, layer=layer).items():
        vgg.get_layer(name).set_weights([kernel, bias])
    self.weights_file = path
    self.layer = layer
    self.downsample = VGG_LAYERS[layer][2]
    self.preprocessing = auto if preprocessing == "auto" else preprocessing
    self.features = keras.Model(vgg.input,
                                vgg.get_layer(VGG_LAYERS[layer][0]).output)
    self.features.trainable = False
    self.trainable = False

  def call(self, images):
    shapes.check_shape(images, "VGGFeatures input", ("B", "H", "W", 3),
                       "images in [-1, 1]")
    # Under a mixed policy Keras casts the input to the compute dtype; the
    # preprocessing constants are float32, and so is the preprocessing.
    images = tf.cast(images, tf.float32)
    x = (caffe_preprocess(images) if self.preprocessing == "caffe"
         else torch_preprocess(images))
    return self.features(x)
