"""VGGFeatures with torchvision's VGG16 (the paper's) and its weight lookup.

torchvision's `vgg16().features` is rebuilt here in PyTorch (the same module
indices: conv/ReLU pairs, max-pools at 4 and 9), randomly initialised and
saved with `torch.save` under torchvision's file name in a fake torch.hub
cache; VGGFeatures loads it through the restricted unpickler and must give
torch's relu3_3 features for the same images.
"""

import collections
import pickle

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import networks

KERAS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
TORCH_FILE = "vgg16-397923af.pth"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
  """HOME, KERAS_HOME, TORCH_HOME and XDG_CACHE_HOME in fresh directories."""
  for name in ("HOME", "KERAS_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
    (tmp_path / name).mkdir()
    monkeypatch.setenv(name, str(tmp_path / name))
  return tmp_path


def test_no_weights_names_both_files_and_the_way_out(empty_caches):
  """Neither file anywhere: the error names both, their folders, lam_perc."""
  with pytest.raises(FileNotFoundError) as error:
    networks.VGGFeatures(weights="imagenet")
  message = str(error.value)
  assert KERAS_FILE in message and TORCH_FILE in message
  assert str(empty_caches / "KERAS_HOME" / "models") in message
  assert str(empty_caches / "TORCH_HOME" / "hub" / "checkpoints") in message
  assert "Unsup3D.lam_perc = 0.0" in message


def test_torch_hub_folder_follows_torch_rules(empty_caches, monkeypatch):
  """TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
  tail = ("hub", "checkpoints", TORCH_FILE)
  assert networks.torch_hub_vgg16_path() == str(
      empty_caches.joinpath("TORCH_HOME", *tail))
  monkeypatch.delenv("TORCH_HOME")
  assert networks.torch_hub_vgg16_path() == str(
      empty_caches.joinpath("XDG_CACHE_HOME", "torch", *tail))
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert networks.torch_hub_vgg16_path() == str(
      empty_caches.joinpath("HOME", ".cache", "torch", *tail))


def test_a_missing_weights_file_is_named(empty_caches):
  """Any other string is a path: missing, it is named with both files."""
  path = str(empty_caches / "nowhere" / "vgg.pth")
  with pytest.raises(FileNotFoundError) as error:
    networks.VGGFeatures(weights=path)
  message = str(error.value)
  assert f"not found at {path}." in message
  assert KERAS_FILE in message and TORCH_FILE in message


# --- torchvision's VGG16 in PyTorch ------------------------------------------


def torchvision_features(torch, seed=0):
  """vgg16().features[:16] (up to relu3_3), random weights and biases."""
  nn = torch.nn
  torch.manual_seed(seed)
  layers, cin = [], 3
  for c in (64, 64, "M", 128, 128, "M", 256, 256, 256):
    if c == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
      cin = c
  features = nn.Sequential(*layers)
  with torch.no_grad():
    for module in features:
      if isinstance(module, nn.Conv2d):
        module.bias.normal_(0.0, 0.1)  # torch's default bias init is tiny
  return features.eval()


def save_2017_style(torch, state, path):
  """The legacy stream as PyTorch 0.1.12 wrote torchvision's VGG16 file:
  tensors pickled as torch.FloatTensor() filled by BUILD with (storage,
  offset, size, stride), storages as 6-tuple persistent ids."""

  class Storage:

    def __init__(self, key, tensor):
      self.key, self.tensor = key, tensor

  class OldTensor:

    def __init__(self, storage):
      t = storage.tensor
      self.state = (storage, 0, tuple(t.shape), t.stride())

    def __reduce__(self):
      return torch.FloatTensor, (), self.state

  class Pickler(pickle.Pickler):

    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ("storage", torch.FloatStorage, obj.key, "cpu",
                obj.tensor.numel(), None)
      return None

  storages = [Storage(str(i), t.contiguous().float())
              for i, t in enumerate(state.values())]
  with open(path, "wb") as f:
    for header in (0x1950a86a20f9469cfc6c, 1001,
                   {"protocol_version": 1001, "little_endian": True}):
      pickle.dump(header, f, protocol=2)
    Pickler(f, protocol=2).dump(collections.OrderedDict(
        (k, OldTensor(s)) for k, s in zip(state, storages)))
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
      f.write(np.int64(s.tensor.numel()).tobytes() +
              s.tensor.numpy().tobytes())


def save_torchvision_file(torch, path, form):
  """A torchvision-like VGG16 state dict saved in `form` ('zip', 'legacy'
  from torch.save, or '2017' as the real file); returns the net."""
  features = torchvision_features(torch)
  state = collections.OrderedDict(
      (f"features.{k}", v) for k, v in features.state_dict().items())
  # Deeper layers and the classifier are in the real file and are ignored
  # (small stand-ins here).
  state["features.17.weight"] = torch.zeros(4, 256, 3, 3)
  state["classifier.0.weight"] = torch.zeros(8, 16)
  path.parent.mkdir(parents=True, exist_ok=True)
  if form == "2017":
    save_2017_style(torch, state, path)
  else:
    torch.save(state, path, _use_new_zipfile_serialization=form == "zip")
  return features


@pytest.mark.torch
@pytest.mark.parametrize("form", ["zip", "legacy", "2017"])
@pytest.mark.parametrize("weights", ["torchvision", "imagenet", "path"])
def test_torchvision_weights_give_torchs_relu3_3(empty_caches, form,
                                                 weights):
  """Loaded from the hub cache (or a path): torch's features to 1e-5."""
  torch = pytest.importorskip("torch")
  path = empty_caches / "TORCH_HOME" / "hub" / "checkpoints" / TORCH_FILE
  features = save_torchvision_file(torch, path, form)
  vgg = networks.VGGFeatures(weights=str(path) if weights == "path"
                             else weights)
  assert vgg.weights_file == str(path)
  assert vgg.preprocessing == "torch"
  assert not vgg.trainable_weights

  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3))
  got = vgg(tf.constant(images, tf.float32)).numpy()
  # The paper's preprocessing, written out in torch: [-1, 1] -> [0, 1],
  # then ImageNet mean / std per RGB channel.
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32))
  with torch.no_grad():
    expected = features((x / 2 + 0.5 - mean) / std).numpy().transpose(
        0, 2, 3, 1)
  assert got.shape == expected.shape == (2, 8, 8, 256)
  assert expected.max() > 0
  relative = np.abs(got - expected).max() / np.abs(expected).max()
  print(f"relu3_3 max |diff| / max |torch| = {relative:.1e}")
  assert relative <= 1e-5, relative


@pytest.mark.torch
def test_keras_weights_name_refuses_a_torch_file(empty_caches):
  torch = pytest.importorskip("torch")
  path = empty_caches / TORCH_FILE
  save_torchvision_file(torch, path, "zip")
  with pytest.raises(ValueError, match="needs Keras' .h5 file"):
    networks.VGGFeatures(weights="keras", weights_path=str(path))


@pytest.mark.torch
def test_wrong_torch_state_dict_names_the_tensors(empty_caches):
  """A state dict that is not VGG16's: each bad tensor and the file named."""
  torch = pytest.importorskip("torch")
  path = empty_caches / "other.pth"
  features = torchvision_features(torch)
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  del state["features.7.bias"]
  state["features.12.weight"] = torch.zeros(256, 128, 3, 3)
  torch.save(state, path)
  with pytest.raises(ValueError) as error:
    networks.VGGFeatures(weights=str(path))
  message = str(error.value)
  assert str(path) in message
  assert "features.7.bias is missing" in message
  assert ("features.12.weight has shape (256, 128, 3, 3), expected "
          "(256, 256, 3, 3)") in message


def test_mapping_transposes_torch_kernels():
  """[out, in, kh, kw] -> [kh, kw, in, out], element by element."""
  rng = np.random.default_rng(2)
  state = {}
  for index, (cout, cin) in zip((0, 2, 5, 7, 10, 12, 14),
                                ((64, 3), (64, 64), (128, 64), (128, 128),
                                 (256, 128), (256, 256), (256, 256))):
    state[f"features.{index}.weight"] = rng.normal(size=(cout, cin, 3, 3))
    state[f"features.{index}.bias"] = rng.normal(size=(cout,))
  weights = networks.torchvision_vgg16_weights(state)
  kernel, bias = weights["block2_conv1"]
  torch_weight = state["features.5.weight"]
  assert kernel.shape == (3, 3, 64, 128) and kernel.dtype == np.float32
  for o, i, y, x in ((0, 0, 0, 0), (127, 63, 2, 1), (5, 7, 1, 2)):
    assert kernel[y, x, i, o] == np.float32(torch_weight[o, i, y, x])
  np.testing.assert_array_equal(bias, state["features.5.bias"].astype(
      np.float32))
  assert sorted(weights) == sorted(
      f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3))
      for c in range(1, n + 1))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
