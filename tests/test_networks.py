"""The networks against the reference architecture of DESIGN section 5."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import networks

NF, ZDIM = 8, 16


def conv(k, cin, cout):
  return k * k * cin * cout


def gn(c):
  return 2 * c


def encoder_params(cout, nf):
  return (conv(4, 3, nf) + conv(4, nf, 2 * nf) + conv(4, 2 * nf, 4 * nf) +
          conv(4, 4 * nf, 8 * nf) + conv(4, 8 * nf, 8 * nf) +
          conv(1, 8 * nf, cout))


def down_params(nf, zdim):
  return (conv(4, 3, nf) + gn(nf) + conv(4, nf, 2 * nf) + gn(2 * nf) +
          conv(4, 2 * nf, 4 * nf) + gn(4 * nf) + conv(4, 4 * nf, 8 * nf) +
          conv(4, 8 * nf, zdim))


def eddeconv_params(cout, zdim, nf):
  up = (conv(4, zdim, 8 * nf) + conv(3, 8 * nf, 8 * nf) +
        conv(4, 8 * nf, 4 * nf) + gn(4 * nf) + conv(3, 4 * nf, 4 * nf) +
        gn(4 * nf) + conv(4, 4 * nf, 2 * nf) + gn(2 * nf) +
        conv(3, 2 * nf, 2 * nf) + gn(2 * nf) + conv(4, 2 * nf, nf) + gn(nf) +
        conv(3, nf, nf) + gn(nf) + conv(3, nf, nf) + gn(nf) +
        conv(5, nf, nf) + gn(nf) + conv(5, nf, cout))
  return down_params(nf, zdim) + up


def confnet_params(zdim, nf):
  trunk = (conv(4, zdim, 8 * nf) + conv(4, 8 * nf, 4 * nf) + gn(4 * nf) +
           conv(4, 4 * nf, 2 * nf) + gn(2 * nf))
  full = (conv(4, 2 * nf, nf) + gn(nf) + conv(4, nf, nf) + gn(nf) +
          conv(5, nf, 2))
  return down_params(nf, zdim) + trunk + full + conv(3, 2 * nf, 2)


def build(net):
  out = net(tf.random.uniform([2, 64, 64, 3], -1, 1))
  return net, out


def test_shapes_ranges_and_parameter_counts():
  enc, out = build(networks.Encoder(6, nf=NF))
  assert out.shape == (2, 6) and np.abs(out.numpy()).max() <= 1
  assert enc.count_params() == encoder_params(6, NF)
  ed, out = build(networks.EDDeconv(3, zdim=ZDIM, nf=NF, activation="tanh"))
  assert out.shape == (2, 64, 64, 3) and np.abs(out.numpy()).max() <= 1
  assert ed.count_params() == eddeconv_params(3, ZDIM, NF)
  ed1, out = build(networks.EDDeconv(1, zdim=ZDIM, nf=NF))
  assert out.shape == (2, 64, 64, 1)
  assert ed1.count_params() == eddeconv_params(1, ZDIM, NF)
  cn, (full, quarter) = build(networks.ConfNet(2, zdim=ZDIM, nf=NF))
  assert full.shape == (2, 64, 64, 2) and quarter.shape == (2, 16, 16, 2)
  assert (full.numpy() > 0).all() and (quarter.numpy() > 0).all()
  assert cn.count_params() == confnet_params(ZDIM, NF)


def layers_of(model):
  return [layer for layer in model._flatten_layers() if not layer._layers]


@pytest.mark.parametrize("make", [
    lambda: networks.EDDeconv(1, zdim=ZDIM, nf=NF),
    lambda: networks.ConfNet(2, zdim=ZDIM, nf=NF),
    lambda: networks.Encoder(4, nf=NF)])
def test_no_bias_groupnorm_and_pytorch_default_init(make):
  net, _ = build(make())
  kernels = 0
  for layer in layers_of(net):
    if isinstance(layer, keras.layers.GroupNormalization):
      channels = layer.gamma.shape[0]
      assert layer.groups == channels // 4 and layer.epsilon == 1e-5
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
      assert not layer.use_bias
      kh, kw, a, b = layer.kernel.shape
      # PyTorch: Conv2d fan_in = cin k k; ConvTranspose2d fan_in = cout k k.
      # Keras kernels: Conv2D (k, k, cin, cout), transposed (k, k, cout, cin).
      bound = 1 / math.sqrt(kh * kw * a)
      w = layer.kernel.numpy()
      assert np.abs(w).max() <= bound
      if w.size > 2000:
        assert np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.1)
      kernels += 1
  assert kernels >= 6


def torch_conv2d(x, w, stride, pad):
  """PyTorch conv2d, NCHW-free: x [H, W, cin], w [k, k, cin, cout]."""
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  k = w.shape[0]
  ho = (x.shape[0] - k) // stride + 1
  wo = (x.shape[1] - k) // stride + 1
  out = np.zeros((ho, wo, w.shape[3]))
  for i in range(ho):
    for j in range(wo):
      patch = x[i * stride:i * stride + k, j * stride:j * stride + k]
      out[i, j] = np.einsum("hwc,hwco->o", patch, w)
  return out


def torch_conv_transpose2d(x, w, stride, pad):
  """PyTorch conv_transpose2d: x [H, W, cin], w [k, k, cout, cin] (Keras layout)."""
  k = w.shape[0]
  h, wd = x.shape[:2]
  full = np.zeros(((h - 1) * stride + k, (wd - 1) * stride + k, w.shape[2]))
  for i in range(h):
    for j in range(wd):
      full[i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          "c,hwoc->hwo", x[i, j], w)
  return full[pad:full.shape[0] - pad, pad:full.shape[1] - pad]


def test_paddings_equal_pytorch():
  x = np.random.default_rng(0).normal(size=(1, 6, 6, 3)).astype(np.float32)
  down = keras.Sequential(networks._conv(4, 4, 2, 1))
  y = down(x).numpy()[0]
  np.testing.assert_allclose(
      y, torch_conv2d(x[0], down.layers[-1].kernel.numpy(), 2, 1), atol=1e-5)
  up = keras.Sequential(networks._deconv(5, 4, 2, 1))
  y = up(x).numpy()[0]
  assert y.shape == (12, 12, 5)
  np.testing.assert_allclose(
      y, torch_conv_transpose2d(x[0], up.layers[0].kernel.numpy(), 2, 1),
      atol=1e-5)


def test_wrong_sizes_are_clear_errors():
  for net in (networks.Encoder(4, nf=NF), networks.EDDeconv(1, ZDIM, NF),
              networks.ConfNet(2, ZDIM, NF)):
    with pytest.raises(ValueError, match="64x64"):
      net(tf.zeros([1, 32, 32, 3]))
  with pytest.raises(ValueError, match="multiple of 4"):
    networks.EDDeconv(1, ZDIM, nf=6)


def test_vgg_features_shape_and_preprocessing():
  vgg = networks.VGGFeatures(weights=None)
  assert vgg(tf.zeros([2, 64, 64, 3])).shape == (2, 16, 16, 256)
  assert vgg.preprocessing == "torch" and not vgg.trainable_weights
  pixel = tf.constant([[[[1.0, -1.0, 0.0]]]])  # RGB (1, 0, 0.5) in [0, 1]
  np.testing.assert_allclose(
      networks.torch_preprocess(pixel).numpy().ravel(),
      [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
      rtol=1e-5)
  np.testing.assert_allclose(
      networks.caffe_preprocess(pixel).numpy().ravel(),
      [127.5 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-5)


def test_missing_vgg_weights_say_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    networks.VGGFeatures(weights="imagenet")
  message = str(error.value)
  assert networks.KERAS_VGG16_FILE in message and "lam_perc" in message
  assert str(tmp_path / "models") in message


def write_legacy_h5(model, path):
  """Writes weights in the legacy HDF5 layout of Keras' downloadable files."""
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "w") as f:
    layers = [layer for layer in model.layers if layer.weights]
    f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
    for layer in layers:
      group = f.create_group(layer.name)
      names = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
      group.attrs["weight_names"] = names
      for name, weight in zip(names, layer.weights):
        group.create_dataset(name.decode(), data=weight.numpy())


def test_vgg_weights_load_from_the_keras_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  source = keras.applications.VGG16(include_top=False, weights=None)
  (tmp_path / "models").mkdir()
  write_legacy_h5(source, tmp_path / "models" / networks.KERAS_VGG16_FILE)
  vgg = networks.VGGFeatures(weights="imagenet")
  assert vgg.preprocessing == "caffe"
  np.testing.assert_array_equal(
      vgg.features.get_layer("block3_conv3").kernel.numpy(),
      source.get_layer("block3_conv3").kernel.numpy())


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
