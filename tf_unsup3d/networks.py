"""The paper's networks as Keras subclassed models (DESIGN section 5).

Layer for layer as the reference PyTorch code: no conv biases, PyTorch's
explicit paddings (ZeroPadding2D + 'valid' convolutions, and 'valid'
transposed convolutions cropped by one pixel for padding=1), GroupNorm with
4 channels per group (epsilon 1e-5) and PyTorch's default initialisation.
Inputs are channels-last images in [-1, 1]; the architecture needs 64x64.
"""

import os

from tf_unsup3d.configurable import keras_configurable
import keras
import tensorflow as tf

# PyTorch's default conv init, kaiming_uniform(a=sqrt(5)), is U(+-1/sqrt(fan_in)).
# VarianceScaling(1/3, fan_in, uniform) has limit sqrt(3 * (1/3) / fan_in), and
# Keras' fan_in (kh * kw * kernel.shape[-2]) is PyTorch's for both Conv2D
# (kh, kw, cin, cout) and Conv2DTranspose (kh, kw, cout, cin) kernels.
def torch_default_init():
  """Initializer equal to PyTorch's default for Conv2d and ConvTranspose2d."""
  return keras.initializers.VarianceScaling(
      scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _conv(filters, kernel, stride=1, padding=0, dtype=None):
  layers = [keras.layers.ZeroPadding2D(padding, dtype=dtype)] if padding else []
  layers.append(keras.layers.Conv2D(
      filters, kernel, strides=stride, padding="valid", use_bias=False,
      kernel_initializer=torch_default_init(), dtype=dtype))
  return layers


def _output(filters, kernel, padding=0, activation=None):
  """The last convolution of a network (+ activation), always in float32.

  Under a mixed bfloat16 policy everything else computes in bfloat16, whose
  8-bit mantissa would quantise depth to ~5e-4 scene units, a sixth of a
  pixel's width at depth 1: the normals, differences of neighbouring depths,
  would be noise. These layers are a small share of the cost.
  """
  layers = _conv(filters, kernel, 1, padding, dtype="float32")
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


def _check_input(x, name):
  if x.shape.rank != 4:
    raise ValueError(f"{name} expects [B, 64, 64, C] images, got {x.shape}.")
  if None not in x.shape[1:3] and tuple(x.shape[1:3]) != (64, 64):
    raise ValueError(f"{name} expects 64x64 inputs (the paper's architecture),"
                     f" got shape {x.shape}.")


def _network_input_shape(input_shape):
  """The 64x64 shape to build with; `call` rejects other sizes clearly."""
  return (None, 64, 64, input_shape[-1])


def _down(nf, zdim):
  """The shared encoder of EDDeconv and ConfNet: 64x64 -> 1x1 x zdim."""
  return (_conv(nf, 4, 2, 1) + _gn(nf) + _lrelu() +
          _conv(nf * 2, 4, 2, 1) + _gn(nf * 2) + _lrelu() +
          _conv(nf * 4, 4, 2, 1) + _gn(nf * 4) + _lrelu() +
          _conv(nf * 8, 4, 2, 1) + _lrelu() +
          _conv(zdim, 4) + _relu())


class Encoder(keras.Model):
  """Image `[B, 64, 64, C]` in [-1, 1] -> `[B, cout]` in [-1, 1] (tanh).

  Light (cout 4) and view (cout 6) encoders, nf 32 in the paper.
  """

  def __init__(self, cout, nf=64, **kwargs):
    super().__init__(**kwargs)
    self.cout = cout
    self.body = keras.Sequential(
        _conv(nf, 4, 2, 1) + _relu() + _conv(nf * 2, 4, 2, 1) + _relu() +
        _conv(nf * 4, 4, 2, 1) + _relu() + _conv(nf * 8, 4, 2, 1) + _relu() +
        _conv(nf * 8, 4) + _relu() + _output(cout, 1, activation="tanh"))

  def build(self, input_shape):
    self.body.build(_network_input_shape(input_shape))

  def call(self, x, training=False):
    _check_input(x, self.name)
    return tf.reshape(self.body(x, training=training), [-1, self.cout])


class EDDeconv(keras.Model):
  """Encoder-decoder: `[B, 64, 64, C]` in [-1, 1] -> `[B, 64, 64, cout]`.

  Depth (cout 1, no activation) and albedo (cout 3, tanh in [-1, 1]) nets;
  zdim 256 and nf 64 in the paper.
  """

  def __init__(self, cout, zdim=256, nf=64, activation=None, **kwargs):
    super().__init__(**kwargs)
    _check_nf(nf)
    if activation not in (None, "tanh"):
      raise ValueError(f"activation must be None or 'tanh', got {activation}.")
    up = (_deconv(nf * 8, 4) + _relu() +
          _conv(nf * 8, 3, 1, 1) + _relu() +
          _deconv(nf * 4, 4, 2, 1) + _gn(nf * 4) + _relu() +
          _conv(nf * 4, 3, 1, 1) + _gn(nf * 4) + _relu() +
          _deconv(nf * 2, 4, 2, 1) + _gn(nf * 2) + _relu() +
          _conv(nf * 2, 3, 1, 1) + _gn(nf * 2) + _relu() +
          _deconv(nf, 4, 2, 1) + _gn(nf) + _relu() +
          _conv(nf, 3, 1, 1) + _gn(nf) + _relu() +
          [keras.layers.UpSampling2D(2, interpolation="nearest")] +
          _conv(nf, 3, 1, 1) + _gn(nf) + _relu() +
          _conv(nf, 5, 1, 2) + _gn(nf) + _relu() +
          _output(cout, 5, 2, activation))
    self.body = keras.Sequential(_down(nf, zdim) + up)

  def build(self, input_shape):
    self.body.build(_network_input_shape(input_shape))

  def call(self, x, training=False):
    _check_input(x, self.name)
    return self.body(x, training=training)


class ConfNet(keras.Model):
  """Confidence maps: `[B, 64, 64, C]` -> (`[B, 64, 64, cout]`, `[B, 16, 16, cout]`).

  Both softplus (> 0): the photometric and the perceptual (quarter
  resolution) confidence, channel 0 for the original, 1 for the mirrored
  branch. zdim 128 and nf 64 in the paper.
  """

  def __init__(self, cout=2, zdim=128, nf=64, **kwargs):
    super().__init__(**kwargs)
    _check_nf(nf)
    self.trunk = keras.Sequential(
        _down(nf, zdim) + _deconv(nf * 8, 4) + _relu() +
        _deconv(nf * 4, 4, 2, 1) + _gn(nf * 4) + _relu() +
        _deconv(nf * 2, 4, 2, 1) + _gn(nf * 2) + _relu())
    self.full_head = keras.Sequential(
        _deconv(nf, 4, 2, 1) + _gn(nf) + _relu() +
        _deconv(nf, 4, 2, 1) + _gn(nf) + _relu() +
        _output(cout, 5, 2, "softplus"))
    self.quarter_head = keras.Sequential(_output(cout, 3, 1, "softplus"))

  def build(self, input_shape):
    input_shape = _network_input_shape(input_shape)
    self.trunk.build(input_shape)
    features_shape = self.trunk.compute_output_shape(input_shape)
    self.full_head.build(features_shape)
    self.quarter_head.build(features_shape)

  def call(self, x, training=False):
    _check_input(x, self.name)
    features = self.trunk(x, training=training)
    return (self.full_head(features, training=training),
            self.quarter_head(features, training=training))


KERAS_VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def torch_preprocess(images):
  """[-1, 1] RGB -> torchvision's VGG input: [0, 1], ImageNet mean/std."""
  x = (images + 1.0) / 2.0
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


@keras_configurable
class VGGFeatures(keras.Model):
  """Frozen VGG16 up to relu3_3 for the perceptual loss.

  `call(images)` maps `[B, H, W, 3]` images in [-1, 1] to `[B, H/4, W/4, 256]`
  features. Weights are never downloaded: `weights='imagenet'` reads
  `weights_path`, or else Keras' cache file; `weights=None` is random
  (tests). Keras' own ImageNet VGG16 was converted from Caffe and expects
  Caffe inputs (BGR, 0..255, mean-subtracted); the paper's torchvision VGG16
  expects RGB in [0, 1] normalised by the ImageNet mean and std (DESIGN). With
  `preprocessing='auto'` the Keras cache file gets 'caffe', an explicit
  `weights_path` (e.g. converted torchvision weights) and random weights get
  'torch'.
  """

  def __init__(self, weights="imagenet", weights_path=None,
               preprocessing="auto", **kwargs):
    super().__init__(**kwargs)
    if weights not in ("imagenet", None):
      raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}.")
    if preprocessing not in ("auto", "torch", "caffe"):
      raise ValueError("preprocessing must be 'auto', 'torch' or 'caffe', got "
                       f"{preprocessing!r}.")
    vgg = keras.applications.VGG16(include_top=False, weights=None,
                                   input_shape=(None, None, 3))
    if weights == "imagenet":
      path = weights_path or keras_cache_vgg16_path()
      if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VGG16 ImageNet weights not found at {path}. The perceptual loss "
            f"needs Keras' file {KERAS_VGG16_FILE}: copy it to "
            f"{keras_cache_vgg16_path()} (the Keras cache; KERAS_HOME moves "
            "it) or set gin `VGGFeatures.weights_path = '/path/to/file.h5'`. "
            "Nothing is downloaded at run time. To train without the "
            "perceptual loss set gin `Unsup3D.lam_perc = 0.0`.")
      vgg.load_weights(path)
    if preprocessing == "auto":
      preprocessing = ("caffe" if weights == "imagenet" and not weights_path
                       else "torch")
    self.preprocessing = preprocessing
    self.features = keras.Model(vgg.input,
                                vgg.get_layer("block3_conv3").output)
    self.features.trainable = False
    self.trainable = False

  def call(self, images):
    if images.shape.rank != 4 or images.shape[-1] != 3:
      raise ValueError(f"VGGFeatures expects [B, H, W, 3] images in [-1, 1], "
                       f"got {images.shape}.")
    # Under a mixed policy Keras casts the input to the compute dtype; the
    # preprocessing constants are float32, and so is the preprocessing.
    images = tf.cast(images, tf.float32)
    x = (caffe_preprocess(images) if self.preprocessing == "caffe"
         else torch_preprocess(images))
    return self.features(x)
