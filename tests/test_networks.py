"""The networks against the reference architecture of DESIGN section 5.

Every expectation here is written down independently of tf_unsup3d: layer
lists and parameter counts from the DESIGN text, PyTorch's convolution and
GroupNorm formulas as NumPy loops, preprocessing constants as arithmetic.
"""

import math

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import networks

NF, ZDIM = 8, 16


# Architecture of DESIGN section 5, as tokens. ("conv"/"deconv", kernel,
# stride, PyTorch padding, filters); Keras' explicit ZeroPadding2D and
# Cropping2D layers fold into that padding when the model is described.
def conv(k, s, p, cout):
  return ("conv", k, s, p, cout)


def deconv(k, s, p, cout):
  return ("deconv", k, s, p, cout)


GN, RELU, LRELU, UP = ("gn",), ("relu",), ("lrelu", 0.2), ("up", 2, "nearest")
TANH, SOFTPLUS = ("tanh",), ("softplus",)


def expected_encoder(cout, nf):
  return [conv(4, 2, 1, nf), RELU, conv(4, 2, 1, 2 * nf), RELU,
          conv(4, 2, 1, 4 * nf), RELU, conv(4, 2, 1, 8 * nf), RELU,
          conv(4, 1, 0, 8 * nf), RELU, conv(1, 1, 0, cout), TANH]


def expected_down(nf, zdim):
  return [conv(4, 2, 1, nf), GN, LRELU, conv(4, 2, 1, 2 * nf), GN, LRELU,
          conv(4, 2, 1, 4 * nf), GN, LRELU, conv(4, 2, 1, 8 * nf), LRELU,
          conv(4, 1, 0, zdim), RELU]


def expected_eddeconv(cout, zdim, nf, tanh):
  up = [deconv(4, 1, 0, 8 * nf), RELU, conv(3, 1, 1, 8 * nf), RELU,
        deconv(4, 2, 1, 4 * nf), GN, RELU, conv(3, 1, 1, 4 * nf), GN, RELU,
        deconv(4, 2, 1, 2 * nf), GN, RELU, conv(3, 1, 1, 2 * nf), GN, RELU,
        deconv(4, 2, 1, nf), GN, RELU, conv(3, 1, 1, nf), GN, RELU,
        UP, conv(3, 1, 1, nf), GN, RELU, conv(5, 1, 2, nf), GN, RELU,
        conv(5, 1, 2, cout)]
  return expected_down(nf, zdim) + up + ([TANH] if tanh else [])


def expected_confnet(zdim, nf):
  trunk = expected_down(nf, zdim) + [
      deconv(4, 1, 0, 8 * nf), RELU, deconv(4, 2, 1, 4 * nf), GN, RELU,
      deconv(4, 2, 1, 2 * nf), GN, RELU]
  full = [deconv(4, 2, 1, nf), GN, RELU, deconv(4, 2, 1, nf), GN, RELU,
          conv(5, 1, 2, 2), SOFTPLUS]
  quarter = [conv(3, 1, 1, 2), SOFTPLUS]
  return trunk, full, quarter


def describe(layers):
  """Keras layers -> architecture tokens (paddings folded into the convs)."""
  tokens, pad = [], 0
  for layer in layers:
    if isinstance(layer, keras.layers.ZeroPadding2D):
      (top, bottom), (left, right) = layer.padding
      assert top == bottom == left == right, layer.padding
      pad = top
    elif isinstance(layer, keras.layers.Conv2DTranspose):
      assert layer.padding == "valid" and pad == 0
      assert layer.kernel_size[0] == layer.kernel_size[1]
      assert layer.strides[0] == layer.strides[1]
      tokens.append(["deconv", layer.kernel_size[0], layer.strides[0], 0,
                     layer.filters])
    elif isinstance(layer, keras.layers.Conv2D):
      assert layer.padding == "valid"
      assert layer.kernel_size[0] == layer.kernel_size[1]
      assert layer.strides[0] == layer.strides[1]
      tokens.append(["conv", layer.kernel_size[0], layer.strides[0], pad,
                     layer.filters])
      pad = 0
    elif isinstance(layer, keras.layers.Cropping2D):
      (top, bottom), (left, right) = layer.cropping
      assert top == bottom == left == right and tokens[-1][0] == "deconv"
      tokens[-1][3] = top
    elif isinstance(layer, keras.layers.GroupNormalization):
      tokens.append(GN)
    elif isinstance(layer, keras.layers.LeakyReLU):
      tokens.append(("lrelu", pytest.approx(layer.negative_slope)))
    elif isinstance(layer, keras.layers.ReLU):
      assert layer.max_value is None and not layer.negative_slope
      assert not layer.threshold
      tokens.append(RELU)
    elif isinstance(layer, keras.layers.UpSampling2D):
      assert layer.size[0] == layer.size[1]
      tokens.append(("up", layer.size[0], layer.interpolation))
    elif isinstance(layer, keras.layers.Activation):
      tokens.append((layer.activation.__name__,))
    else:
      raise AssertionError(f"unexpected layer {layer}")
  return [tuple(token) for token in tokens]


# Parameter counts from the same DESIGN text, as arithmetic: a conv has
# k * k * cin * cout weights (no bias), a GroupNorm 2 * channels.
def conv_params(k, cin, cout):
  return k * k * cin * cout


def gn_params(channels):
  return 2 * channels


def encoder_params(cin, cout, nf):
  return (conv_params(4, cin, nf) + conv_params(4, nf, 2 * nf) +
          conv_params(4, 2 * nf, 4 * nf) + conv_params(4, 4 * nf, 8 * nf) +
          conv_params(4, 8 * nf, 8 * nf) + conv_params(1, 8 * nf, cout))


def down_params(cin, nf, zdim):
  return (conv_params(4, cin, nf) + gn_params(nf) +
          conv_params(4, nf, 2 * nf) + gn_params(2 * nf) +
          conv_params(4, 2 * nf, 4 * nf) + gn_params(4 * nf) +
          conv_params(4, 4 * nf, 8 * nf) + conv_params(4, 8 * nf, zdim))


def eddeconv_params(cin, cout, zdim, nf):
  up = (conv_params(4, zdim, 8 * nf) + conv_params(3, 8 * nf, 8 * nf) +
        conv_params(4, 8 * nf, 4 * nf) + gn_params(4 * nf) +
        conv_params(3, 4 * nf, 4 * nf) + gn_params(4 * nf) +
        conv_params(4, 4 * nf, 2 * nf) + gn_params(2 * nf) +
        conv_params(3, 2 * nf, 2 * nf) + gn_params(2 * nf) +
        conv_params(4, 2 * nf, nf) + gn_params(nf) +
        conv_params(3, nf, nf) + gn_params(nf) +
        conv_params(3, nf, nf) + gn_params(nf) +
        conv_params(5, nf, nf) + gn_params(nf) +
        conv_params(5, nf, cout))
  return down_params(cin, nf, zdim) + up


def confnet_params(cin, zdim, nf):
  trunk = (conv_params(4, zdim, 8 * nf) + conv_params(4, 8 * nf, 4 * nf) +
           gn_params(4 * nf) + conv_params(4, 4 * nf, 2 * nf) +
           gn_params(2 * nf))
  full = (conv_params(4, 2 * nf, nf) + gn_params(nf) +
          conv_params(4, nf, nf) + gn_params(nf) + conv_params(5, nf, 2))
  quarter = conv_params(3, 2 * nf, 2)
  return down_params(cin, nf, zdim) + trunk + full + quarter


def count(weights):
  return sum(int(np.prod(w.shape)) for w in weights)


def images(batch=2):
  return tf.random.uniform([batch, 64, 64, 3], -1.0, 1.0, seed=1)


@pytest.fixture(scope="module")
def nets():
  """Tiny built networks and their outputs on one random batch."""
  x = images()
  built = {
      "encoder": networks.Encoder(6, nf=NF),
      "depth": networks.EDDeconv(1, zdim=ZDIM, nf=NF),
      "albedo": networks.EDDeconv(3, zdim=ZDIM, nf=NF, activation="tanh"),
      "conf": networks.ConfNet(2, zdim=ZDIM, nf=NF),
  }
  outputs = {name: net(x) for name, net in built.items()}
  return built, outputs


def leaf_layers(net):
  if isinstance(net, networks.ConfNet):
    return net.trunk.layers + net.full_head.layers + net.quarter_head.layers
  return net.body.layers


def test_encoder_shape_and_tanh_range(nets):
  """Encoder: [B, cout] in [-1, 1] (tanh), not constant over the batch."""
  out = nets[1]["encoder"].numpy()
  assert out.shape == (2, 6)
  assert np.all(np.abs(out) <= 1.0)
  assert np.abs(out[0] - out[1]).max() > 0


def test_eddeconv_shapes_and_albedo_range(nets):
  """EDDeconv: [B, 64, 64, cout]; the tanh variant stays in [-1, 1]."""
  depth, albedo = nets[1]["depth"].numpy(), nets[1]["albedo"].numpy()
  assert depth.shape == (2, 64, 64, 1)
  assert albedo.shape == (2, 64, 64, 3)
  assert np.all(np.abs(albedo) <= 1.0)
  assert np.all(np.isfinite(depth))


def test_confnet_shapes_and_positive(nets):
  """ConfNet: ([B, 64, 64, 2], [B, 16, 16, 2]), both softplus > 0."""
  full, quarter = (o.numpy() for o in nets[1]["conf"])
  assert full.shape == (2, 64, 64, 2)
  assert quarter.shape == (2, 16, 16, 2)
  assert np.all(full > 0) and np.all(quarter > 0)


def test_layer_sequences_follow_design(nets):
  """Each network's layer list equals DESIGN section 5, written out by hand."""
  built = nets[0]
  assert describe(leaf_layers(built["encoder"])) == expected_encoder(6, NF)
  assert describe(leaf_layers(built["depth"])) == expected_eddeconv(
      1, ZDIM, NF, tanh=False)
  assert describe(leaf_layers(built["albedo"])) == expected_eddeconv(
      3, ZDIM, NF, tanh=True)
  trunk, full, quarter = expected_confnet(ZDIM, NF)
  conf = built["conf"]
  assert describe(conf.trunk.layers) == trunk
  assert describe(conf.full_head.layers) == full
  assert describe(conf.quarter_head.layers) == quarter


def test_trainable_parameter_counts(nets):
  """Trainable parameters equal k*k*cin*cout per conv + 2*C per GroupNorm."""
  built = nets[0]
  assert count(built["encoder"].trainable_weights) == encoder_params(3, 6, NF)
  assert count(built["depth"].trainable_weights) == eddeconv_params(
      3, 1, ZDIM, NF)
  assert count(built["albedo"].trainable_weights) == eddeconv_params(
      3, 3, ZDIM, NF)
  assert count(built["conf"].trainable_weights) == confnet_params(3, ZDIM, NF)
  for net in built.values():
    assert not net.non_trainable_weights


@pytest.mark.parametrize("name,convs,norms", [
    ("encoder", 6, 0), ("depth", 16, 11), ("albedo", 16, 11),
    ("conf", 12, 7)])
def test_groupnorm_settings_and_no_bias(nets, name, convs, norms):
  """GroupNorm: groups = channels / 4, epsilon 1e-5; no conv has a bias."""
  seen_convs, seen_norms = 0, 0
  for layer in leaf_layers(nets[0][name]):
    if isinstance(layer, keras.layers.GroupNormalization):
      channels = layer.gamma.shape[0]
      assert layer.groups == channels // 4
      assert layer.epsilon == 1e-5
      assert layer.center and layer.scale
      seen_norms += 1
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
      assert not layer.use_bias and layer.bias is None
      assert len(layer.weights) == 1
      seen_convs += 1
  assert (seen_convs, seen_norms) == (convs, norms)


def test_groupnorm_matches_pytorch_formula(nets):
  """A network GroupNorm equals PyTorch's: contiguous groups, biased var."""
  layer = next(l for l in leaf_layers(nets[0]["depth"])
               if isinstance(l, keras.layers.GroupNormalization)
               and l.gamma.shape[0] == 2 * NF)
  channels = 2 * NF
  rng = np.random.default_rng(3)
  gamma = rng.normal(size=channels).astype(np.float32)
  beta = rng.normal(size=channels).astype(np.float32)
  saved = [w.numpy() for w in layer.weights]
  layer.set_weights([gamma, beta])
  try:
    x = rng.normal(1.0, 2.0, size=(2, 3, 5, channels)).astype(np.float32)
    got = layer(x).numpy()
  finally:
    layer.set_weights(saved)
  expected = np.zeros_like(x, dtype=np.float64)
  for b in range(2):
    for g in range(channels // 4):
      block = x[b, :, :, 4 * g:4 * g + 4].astype(np.float64)
      mean = block.sum() / block.size
      var = ((block - mean) ** 2).sum() / block.size
      expected[b, :, :, 4 * g:4 * g + 4] = (block - mean) / math.sqrt(
          var + 1e-5)
  expected = expected * gamma + beta
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def all_conv_layers(nets):
  for net in nets[0].values():
    for layer in leaf_layers(net):
      if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
        yield layer


def test_pytorch_default_init_bounds(nets):
  """|w| <= 1/sqrt(fan_in) (PyTorch fan_in); large kernels: std = bound/√3."""
  checked_std = 0
  for layer in all_conv_layers(nets):
    w = layer.kernel.numpy()
    kh, kw = w.shape[:2]
    if isinstance(layer, keras.layers.Conv2DTranspose):
      # Keras (kh, kw, cout, cin); PyTorch ConvTranspose2d weight
      # (cin, cout, kh, kw) has fan_in = size(1) * kh * kw = cout * kh * kw.
      cout = w.shape[2]
      assert cout == layer.filters
      bound = 1.0 / math.sqrt(kh * kw * cout)
    else:
      # Keras (kh, kw, cin, cout); PyTorch Conv2d fan_in = cin * kh * kw.
      cin = w.shape[2]
      assert w.shape[3] == layer.filters
      bound = 1.0 / math.sqrt(kh * kw * cin)
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    if w.size >= 1000:
      assert np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.1)
      assert np.abs(w).max() > 0.95 * bound
      checked_std += 1
  assert checked_std >= 10


def torch_conv2d(x, weight, stride, padding):
  """PyTorch F.conv2d for one CHW image, weight [cout, cin, kh, kw]."""
  cin, h, w = x.shape
  cout, _, kh, kw = weight.shape
  ho = (h + 2 * padding - kh) // stride + 1
  wo = (w + 2 * padding - kw) // stride + 1
  out = np.zeros((cout, ho, wo))
  for o in range(cout):
    for i in range(ho):
      for j in range(wo):
        total = 0.0
        for c in range(cin):
          for a in range(kh):
            for b in range(kw):
              y, z = i * stride - padding + a, j * stride - padding + b
              if 0 <= y < h and 0 <= z < w:
                total += x[c, y, z] * weight[o, c, a, b]
        out[o, i, j] = total
  return out


def torch_conv_transpose2d(x, weight, stride, padding):
  """PyTorch F.conv_transpose2d for one CHW image, weight [cin, cout, kh, kw]."""
  cin, h, w = x.shape
  _, cout, kh, kw = weight.shape
  ho = (h - 1) * stride - 2 * padding + kh
  wo = (w - 1) * stride - 2 * padding + kw
  out = np.zeros((cout, ho, wo))
  for c in range(cin):
    for i in range(h):
      for j in range(w):
        for a in range(kh):
          for b in range(kw):
            y, z = i * stride - padding + a, j * stride - padding + b
            if 0 <= y < ho and 0 <= z < wo:
              out[:, y, z] += x[c, i, j] * weight[c, :, a, b]
  return out


@pytest.mark.parametrize("kernel,stride,padding", [
    (4, 2, 1), (3, 1, 1), (5, 1, 2), (4, 1, 0)])
def test_conv_padding_equals_pytorch(kernel, stride, padding):
  """_conv equals a NumPy loop of PyTorch conv2d(stride, padding)."""
  x = np.random.default_rng(4).normal(size=(1, 6, 8, 3)).astype(np.float32)
  layer = keras.Sequential(networks._conv(4, kernel, stride, padding))
  got = layer(x).numpy()[0].transpose(2, 0, 1)
  # Keras Conv2D kernel (kh, kw, cin, cout) -> PyTorch (cout, cin, kh, kw).
  weight = layer.layers[-1].kernel.numpy().transpose(3, 2, 0, 1)
  expected = torch_conv2d(x[0].transpose(2, 0, 1), weight, stride, padding)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (4, 1, 0)])
def test_deconv_padding_equals_pytorch(kernel, stride, padding):
  """_deconv equals a NumPy loop of PyTorch conv_transpose2d(stride, pad)."""
  x = np.random.default_rng(5).normal(size=(1, 3, 5, 3)).astype(np.float32)
  layer = keras.Sequential(networks._deconv(4, kernel, stride, padding))
  got = layer(x).numpy()[0].transpose(2, 0, 1)
  # Keras Conv2DTranspose kernel (kh, kw, cout, cin) -> PyTorch's
  # ConvTranspose2d layout (cin, cout, kh, kw).
  weight = layer.layers[0].kernel.numpy().transpose(3, 2, 0, 1)
  expected = torch_conv_transpose2d(x[0].transpose(2, 0, 1), weight, stride,
                                    padding)
  assert got.shape == expected.shape
  if stride == 2:
    assert got.shape[1:] == (6, 10)  # PyTorch (H - 1) * 2 - 2 + 4 = 2H.
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: networks.Encoder(4, nf=NF),
    lambda: networks.EDDeconv(1, zdim=ZDIM, nf=NF),
    lambda: networks.ConfNet(2, zdim=ZDIM, nf=NF)])
def test_32x32_input_is_value_error(make):
  """The architecture needs 64x64: a 32x32 image raises ValueError."""
  with pytest.raises(ValueError, match="64x64"):
    make()(tf.zeros([1, 32, 32, 3]))


@pytest.mark.parametrize("make", [
    lambda nf: networks.EDDeconv(1, zdim=ZDIM, nf=nf),
    lambda nf: networks.ConfNet(2, zdim=ZDIM, nf=nf)])
@pytest.mark.parametrize("nf", [6, 10, 0])
def test_nf_not_multiple_of_4_is_value_error(make, nf):
  """GroupNorm needs 4 channels per group: nf in {6, 10, 0} raises."""
  with pytest.raises(ValueError, match="multiple of 4"):
    make(nf)


def test_torch_preprocess_by_hand():
  """RGB [-1,1] -> ([0,1] - ImageNet mean) / std, computed per pixel."""
  pixels = tf.constant([[[[1.0, -1.0, 0.0], [0.5, 0.2, -0.6]]]])
  # In [0, 1]: (1, 0, 0.5) and (0.75, 0.6, 0.2).
  expected = [[(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224,
               (0.5 - 0.406) / 0.225],
              [(0.75 - 0.485) / 0.229, (0.6 - 0.456) / 0.224,
               (0.2 - 0.406) / 0.225]]
  got = networks.torch_preprocess(pixels).numpy()
  np.testing.assert_allclose(got[0, 0], expected, rtol=1e-5, atol=1e-6)


def test_caffe_preprocess_by_hand():
  """RGB [-1,1] -> BGR in 0..255 minus (103.939, 116.779, 123.68)."""
  pixels = tf.constant([[[[1.0, -1.0, 0.0], [0.5, 0.2, -0.6]]]])
  # In 0..255: RGB (255, 0, 127.5) and (191.25, 153, 51); then BGR.
  expected = [[127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68],
              [51.0 - 103.939, 153.0 - 116.779, 191.25 - 123.68]]
  got = networks.caffe_preprocess(pixels).numpy()
  np.testing.assert_allclose(got[0, 0], expected, rtol=1e-5, atol=1e-4)


def numpy_torch_preprocess(x):
  return ((x + 1.0) / 2.0 - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225])


def numpy_caffe_preprocess(x):
  return (x + 1.0) * 127.5 @ np.eye(3)[::-1] - np.array(
      [103.939, 116.779, 123.68])


def test_vgg_features_random_weights():
  """weights=None: [B,16,16,256] relu3_3 (>= 0) of torch-preprocessed input."""
  vgg = networks.VGGFeatures(weights=None)
  x = np.random.default_rng(6).uniform(-1, 1, (2, 64, 64, 3))
  feats = vgg(tf.constant(x, tf.float32)).numpy()
  assert feats.shape == (2, 16, 16, 256)
  assert vgg.preprocessing == "torch"
  assert not vgg.trainable_weights
  assert feats.min() >= 0 and feats.max() > 0  # after the ReLU of conv3_3
  direct = vgg.features(tf.constant(numpy_torch_preprocess(x), tf.float32))
  np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-4)


def test_vgg_missing_cache_file_explains(tmp_path, monkeypatch):
  """No file under a fresh KERAS_HOME: FileNotFoundError naming the fix."""
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    networks.VGGFeatures(weights="imagenet")
  message = str(error.value)
  assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
  assert "lam_perc" in message
  assert str(tmp_path / "models") in message


def test_keras3_refuses_to_save_a_plain_h5_name(tmp_path):
  """Keras 3 save_weights needs '.weights.h5'; '.h5' is the legacy reader."""
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  with pytest.raises(ValueError, match=r"\.weights\.h5"):
    model.save_weights(str(tmp_path / "model.h5"))


def write_legacy_h5(model, path):
  """Weights in the legacy HDF5 layout of Keras' downloadable VGG16 file.

  Keras 3 `save_weights` only writes its new `.weights.h5` format, while
  `load_weights` reads a plain `.h5` name with the legacy, order-based
  reader: root attribute `layer_names`, one group per layer with attribute
  `weight_names` and one dataset per weight.
  """
  with h5py.File(path, "w") as f:
    layers = [layer for layer in model.layers if layer.weights]
    f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
    for layer in layers:
      group = f.create_group(layer.name)
      suffixes = ["W_1:0", "b_1:0"]
      names = [f"{layer.name}_{s}".encode() for s in suffixes]
      group.attrs["weight_names"] = names
      for name, weight in zip(names, layer.weights):
        group.create_dataset(name.decode(), data=weight.numpy())


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
  """A random VGG16 (no top) saved as Keras' cache file; returns its layers."""
  keras.utils.set_random_seed(7)
  source = keras.applications.VGG16(include_top=False, weights=None)
  home = tmp_path_factory.mktemp("keras_home")
  (home / "models").mkdir()
  path = home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  write_legacy_h5(source, path)
  kernels = {layer.name: [w.numpy() for w in layer.weights]
             for layer in source.layers if layer.weights}
  reference = keras.Model(source.input,
                          source.get_layer("block3_conv3").output)
  return home, path, kernels, reference


def test_vgg_loads_the_keras_cache_file(vgg_file, monkeypatch):
  """weights='imagenet' reads <KERAS_HOME>/models/...: saved kernels, caffe."""
  home, _, kernels, reference = vgg_file
  monkeypatch.setenv("KERAS_HOME", str(home))
  vgg = networks.VGGFeatures(weights="imagenet")
  assert vgg.preprocessing == "caffe"
  np.testing.assert_array_equal(
      vgg.features.get_layer("block3_conv3").kernel.numpy(),
      kernels["block3_conv3"][0])
  for name in ("block1_conv1", "block2_conv2", "block3_conv1"):
    for got, saved in zip(vgg.features.get_layer(name).weights, kernels[name]):
      np.testing.assert_array_equal(got.numpy(), saved)
  x = np.random.default_rng(8).uniform(-1, 1, (1, 64, 64, 3))
  expected = reference(tf.constant(numpy_caffe_preprocess(x), tf.float32))
  got = vgg(tf.constant(x, tf.float32))
  np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4,
                             atol=1e-3)


def test_vgg_explicit_weights_path_uses_torch_preprocessing(
    vgg_file, tmp_path, monkeypatch):
  """An explicit weights_path loads that file and defaults to 'torch'."""
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache
  _, path, kernels, _ = vgg_file
  vgg = networks.VGGFeatures(weights="imagenet", weights_path=str(path))
  assert vgg.preprocessing == "torch"
  np.testing.assert_array_equal(
      vgg.features.get_layer("block3_conv3").kernel.numpy(),
      kernels["block3_conv3"][0])


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))


# --- Image sizes 64, 128, 256 ------------------------------------------------
#
# The layout for larger S, written down as channel ladders (multiples of nf):
# the encoders' stride-2 stages at resolutions S/2, S/4, ..., 4, and the
# decoders' resolutions 4, 8, ..., S/2 (the reverse). At 64 these are the
# paper's ladders; each doubling adds one stage, with 8 nf at the coarse end.
DOWN_LADDER = {64: [1, 2, 4, 8], 128: [1, 2, 4, 8, 8],
               256: [1, 2, 4, 8, 8, 8]}
UP_LADDER = {64: [8, 4, 2, 1], 128: [8, 8, 4, 2, 1],
             256: [8, 8, 8, 4, 2, 1]}


def sized_encoder(cout, nf, size):
  layers = []
  for m in DOWN_LADDER[size]:
    layers += [conv(4, 2, 1, m * nf), RELU]
  return layers + [conv(4, 1, 0, 8 * nf), RELU, conv(1, 1, 0, cout), TANH]


def sized_down(nf, zdim, size):
  ladder, layers = DOWN_LADDER[size], []
  for i, m in enumerate(ladder):
    last = i == len(ladder) - 1
    layers += [conv(4, 2, 1, m * nf)] + ([] if last else [GN]) + [LRELU]
  return layers + [conv(4, 1, 0, zdim), RELU]


def sized_eddeconv(cout, zdim, nf, size, tanh):
  first, *rest = UP_LADDER[size]
  up = [deconv(4, 1, 0, first * nf), RELU, conv(3, 1, 1, first * nf), RELU]
  for m in rest:
    up += [deconv(4, 2, 1, m * nf), GN, RELU, conv(3, 1, 1, m * nf), GN, RELU]
  up += [UP, conv(3, 1, 1, nf), GN, RELU, conv(5, 1, 2, nf), GN, RELU,
         conv(5, 1, 2, cout)]
  return sized_down(nf, zdim, size) + up + ([TANH] if tanh else [])


def sized_confnet(zdim, nf, size, downsample):
  """Trunk to S/downsample, the perceptual head there, the full head up to S
  (its last stage nf wide)."""
  first, *rest = UP_LADDER[size]
  widths = rest + [1]  # at resolutions 8, ..., S/2, S
  resolutions = [8 * 2 ** i for i in range(len(widths))]
  trunk = sized_down(nf, zdim, size) + [deconv(4, 1, 0, first * nf), RELU]
  full = []
  for r, m in zip(resolutions, widths):
    stage = [deconv(4, 2, 1, m * nf), GN, RELU]
    if r <= size // downsample:
      trunk += stage
    else:
      full += stage
  return trunk, full + [conv(5, 1, 2, 2), SOFTPLUS], [conv(3, 1, 1, 2),
                                                      SOFTPLUS]


def test_sized_layer_lists_at_64_are_the_papers():
  """The ladders reproduce the hand-written 64x64 lists above."""
  assert sized_encoder(6, NF, 64) == expected_encoder(6, NF)
  assert sized_eddeconv(3, ZDIM, NF, 64, True) == expected_eddeconv(
      3, ZDIM, NF, True)
  assert sized_confnet(ZDIM, NF, 64, 4) == expected_confnet(ZDIM, NF)


def sized_params(tokens, cin):
  """k * k * cin * cout per conv, 2 * C per GroupNorm, along a layer list."""
  total, channels = 0, cin
  for token in tokens:
    if token[0] in ("conv", "deconv"):
      total += token[1] ** 2 * channels * token[4]
      channels = token[4]
    elif token == GN:
      total += 2 * channels
  return total


# Written out for nf = 8, zdim = 16, 3 input channels: (k*k*cin*cout per
# conv, 2*C per GroupNorm); S = 64 equals encoder_params etc. above.
ENCODER_128_PARAMS = (16 * 3 * 8 + 16 * 8 * 16 + 16 * 16 * 32 +
                      16 * 32 * 64 + 16 * 64 * 64 + 16 * 64 * 64 + 64 * 6)
DOWN_128_PARAMS = (16 * 3 * 8 + 16 + 16 * 8 * 16 + 32 + 16 * 16 * 32 + 64 +
                   16 * 32 * 64 + 128 + 16 * 64 * 64 + 16 * 64 * 16)
EDDECONV_128_PARAMS = DOWN_128_PARAMS + (
    16 * 16 * 64 + 9 * 64 * 64 +                          # 4x4
    16 * 64 * 64 + 128 + 9 * 64 * 64 + 128 +              # 8x8
    16 * 64 * 32 + 64 + 9 * 32 * 32 + 64 +                # 16x16
    16 * 32 * 16 + 32 + 9 * 16 * 16 + 32 +                # 32x32
    16 * 16 * 8 + 16 + 9 * 8 * 8 + 16 +                   # 64x64
    9 * 8 * 8 + 16 + 25 * 8 * 8 + 16 + 25 * 8 * 3)        # 128x128
CONFNET_128_PARAMS = DOWN_128_PARAMS + (
    16 * 16 * 64 + 16 * 64 * 64 + 128 + 16 * 64 * 32 + 64 +
    16 * 32 * 16 + 32 +                                   # trunk to 32x32
    16 * 16 * 8 + 16 + 16 * 8 * 8 + 16 + 25 * 8 * 2 +     # full head
    9 * 16 * 2)                                           # quarter head


@pytest.mark.parametrize("size", [64, 128, 256])
def test_layer_lists_and_parameter_counts_per_size(size):
  """Each network at S: the ladder's layer list, and trainable parameters
  equal to the list's k*k*cin*cout + 2*C (and, at 64 and 128, to the
  counts written out by hand)."""
  nets = {
      "encoder": networks.Encoder(6, nf=NF, image_size=size),
      "albedo": networks.EDDeconv(3, zdim=ZDIM, nf=NF, activation="tanh",
                                  image_size=size),
      "conf": networks.ConfNet(2, zdim=ZDIM, nf=NF, image_size=size),
  }
  for net in nets.values():
    net.build((None, size, size, 3))
  trunk, full, quarter = sized_confnet(ZDIM, NF, size, 4)
  expected = {"encoder": sized_encoder(6, NF, size),
              "albedo": sized_eddeconv(3, ZDIM, NF, size, tanh=True),
              "conf": trunk + full + quarter}
  for name, net in nets.items():
    assert describe(leaf_layers(net)) == expected[name], name
  conf = nets["conf"]
  assert describe(conf.trunk.layers) == trunk
  assert describe(conf.quarter_head.layers) == quarter
  counts = {name: count(net.trainable_weights) for name, net in nets.items()}
  quarter_cin = trunk[-3][4]
  assert counts == {
      "encoder": sized_params(expected["encoder"], 3),
      "albedo": sized_params(expected["albedo"], 3),
      "conf": sized_params(trunk + full, 3) + sized_params(quarter,
                                                           quarter_cin)}
  by_hand = {64: {"encoder": encoder_params(3, 6, NF),
                  "albedo": eddeconv_params(3, 3, ZDIM, NF),
                  "conf": confnet_params(3, ZDIM, NF)},
             128: {"encoder": ENCODER_128_PARAMS,
                   "albedo": EDDECONV_128_PARAMS,
                   "conf": CONFNET_128_PARAMS}}
  if size in by_hand:
    assert counts == by_hand[size]


@pytest.mark.parametrize("size", [64, 128, 256])
def test_output_shapes_per_size(size):
  """[B, cout]; [B, S, S, cout]; ([B, S, S, 2], [B, S/4, S/4, 2]) and with
  perc_downsample 8 [B, S/8, S/8, 2]."""
  x = tf.random.uniform([1, size, size, 3], -1.0, 1.0, seed=2)
  assert networks.Encoder(4, nf=4, image_size=size)(x).shape == (1, 4)
  depth = networks.EDDeconv(1, zdim=8, nf=4, image_size=size)(x)
  assert depth.shape == (1, size, size, 1)
  assert np.all(np.isfinite(depth.numpy()))
  for downsample in (4, 8):
    full, perc = networks.ConfNet(2, zdim=8, nf=4, image_size=size,
                                  perc_downsample=downsample)(x)
    assert full.shape == (1, size, size, 2)
    assert perc.shape == (1, size // downsample, size // downsample, 2)
    assert np.all(full.numpy() > 0) and np.all(perc.numpy() > 0)


@pytest.mark.parametrize("make", [
    lambda s: networks.Encoder(4, nf=NF, image_size=s),
    lambda s: networks.EDDeconv(1, zdim=ZDIM, nf=NF, image_size=s),
    lambda s: networks.ConfNet(2, zdim=ZDIM, nf=NF, image_size=s)])
@pytest.mark.parametrize("size", [32, 96, 512])
def test_unsupported_image_size_is_value_error(make, size):
  """Only 64, 128 and 256: the error names them."""
  with pytest.raises(ValueError, match=r"\(64, 128, 256\)"):
    make(size)


def test_input_of_the_wrong_size_names_the_networks_size():
  net = networks.EDDeconv(1, zdim=ZDIM, nf=NF, image_size=128)
  with pytest.raises(ValueError, match=r"\[B, 128, 128, C\]"):
    net(tf.zeros([1, 64, 64, 3]))


def test_confnet_perc_downsample_other_than_4_or_8_is_value_error():
  with pytest.raises(ValueError, match="perc_downsample"):
    networks.ConfNet(2, zdim=ZDIM, nf=NF, perc_downsample=2)


@pytest.mark.parametrize("layer,downsample,channels", [
    ("relu3_3", 4, 256), ("relu4_3", 8, 512)])
def test_vgg_layer_resolution(layer, downsample, channels):
  """relu3_3: [B, H/4, W/4, 256]; relu4_3: [B, H/8, W/8, 512]."""
  vgg = networks.VGGFeatures(weights=None, layer=layer)
  assert vgg.downsample == downsample == networks.vgg_downsample(layer)
  x = np.random.default_rng(9).uniform(-1, 1, (1, 64, 32, 3))
  assert vgg(x.astype(np.float32)).shape == (
      1, 64 // downsample, 32 // downsample, channels)


def test_unknown_vgg_layer_is_value_error():
  with pytest.raises(ValueError, match="relu3_3"):
    networks.VGGFeatures(weights=None, layer="relu5_3")


def test_torchvision_weights_for_relu4_3_need_block4():
  """relu3_3 reads features.0 ... 14; relu4_3 also 17, 19, 21, and names a
  missing one."""
  rng = np.random.default_rng(10)
  shapes = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128),
            10: (256, 128), 12: (256, 256), 14: (256, 256)}
  state = {}
  for index, (cout, cin) in shapes.items():
    state[f"features.{index}.weight"] = rng.normal(size=(cout, cin, 3, 3))
    state[f"features.{index}.bias"] = rng.normal(size=cout)
  assert len(networks.torchvision_vgg16_weights(state)) == 7
  with pytest.raises(ValueError, match=r"features\.17\.weight is missing"):
    networks.torchvision_vgg16_weights(state, layer="relu4_3")
  for index, cin in ((17, 256), (19, 512), (21, 512)):
    state[f"features.{index}.weight"] = rng.normal(size=(512, cin, 3, 3))
    state[f"features.{index}.bias"] = rng.normal(size=512)
  weights = networks.torchvision_vgg16_weights(state, layer="relu4_3")
  assert weights["block4_conv3"][0].shape == (3, 3, 512, 512)
  np.testing.assert_array_equal(
      weights["block4_conv1"][0],
      state["features.17.weight"].transpose(2, 3, 1, 0).astype(np.float32))
