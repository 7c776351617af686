"""Reference checkpoints: safe loading, layout mapping and numerical parity.

The reference networks are rebuilt in PyTorch below from DESIGN section 5
(nn.Sequential `network`; ConfNet's heads `out_net1`, `out_net2`; the module
indices of the reference), randomly initialised, saved like the reference
trainer saves them (optimizer states, a `unsup3d.meters.MetricsTrace`,
`epoch`) and imported. The reference's forward pass and losses are written
in PyTorch here from its formulas; the one part not rebuilt is the mesh
rasteriser (the reference's neural_renderer needs CUDA), so the end-to-end
test feeds both sides the same rasterised depth.

GroupNorm: the reference hard-codes 16, 32 and 64 groups for nf, 2nf and 4nf
channels with nf = 64; this project (and the PyTorch rebuild here) uses 4
channels per group, the same at the paper's sizes
(`test_paper_size_networks_match`) and also valid for the small test sizes.

Largest differences measured over repeated runs (torch 2.13 CPU, TensorFlow
2.21 CPU, float32, 2 cores; `python -m pytest tests/test_import_torch.py -s`
prints them, `test_print_measured_differences` last), and the bounds tested:

quantity                                     largest difference      bound
netD / netA / netL / netV outputs (nf 16)    3.6e-6 5.0e-6 2.2e-9 3.7e-9  1e-4
netC outputs, full / quarter resolution      1.6e-6 1.6e-6                1e-4
paper sizes: netD / netA / netL / netV       6.2e-6 5.5e-6 9.6e-9 6.9e-9  1e-4
paper sizes: netC full / quarter             2.5e-6 2.0e-6                1e-4
normals from depth (steep steps included)    1.9e-6                       1e-5
inverse-warp sampling grid (values to 2.4)   7.2e-7                       1e-5
bilinear sampling: value / d image           2.4e-7 2.4e-7                1e-5
bilinear sampling: d grid (max |d grid| 492) 3.1e-5 (6.2e-8 rel.)  1e-6 rel.
photometric loss, conf / no conf, relative   0      8.9e-8                1e-5
perceptual loss, conf / no conf, relative    7.7e-7 2.2e-7                1e-5
end to end: canonical depth / albedo         3.6e-7 5.0e-6                1e-4
end to end: normals / diffuse shading        4.0e-5 1.9e-5                1e-4
end to end: canonical / recon images         1.2e-5 1.4e-5                1e-4
end to end: light, view / conf maps / mask   3.7e-9 1.6e-6 0              1e-4
end to end: every loss term, relative        2.2e-7                       1e-5
gradients: netD / netA / netL / netV / netC  8.0e-6 2.3e-6 6.5e-7 2.1e-6
                                             1.0e-6                 1e-4 rel.

Gradients are compared per network relative to its largest gradient
(max |diff| / max |grad|). End-to-end normals differ most: |tu x tv| is only
~3e-5 at this focal length, so the 3.6e-7 canonical-depth round-off grows
by about 100 through the normalisation; on identical depth they agree to
1.9e-6.

"""

import collections
import copy
import io
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import checkpoints
from tf_unsup3d import losses
from tf_unsup3d import model as model_lib
from tf_unsup3d.rendering import renderer as renderer_lib
from tf_unsup3d.rendering import sampling
from tf_unsup3d.tools import import_torch

torch = pytest.importorskip(
    "torch", reason="needs PyTorch: pip install torch==2.13.0 (or "
    "pip install -e '.[torch]')")
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, B = 64, 2
SMALL = {"nf": 16, "zdim": 32, "light_view_nf": 8, "conf_zdim": 16}
PAPER = {"nf": 64, "zdim": 256, "light_view_nf": 32, "conf_zdim": 128}
EPS = 1e-7
MEASURED = {}


def record(name, value):
  """Keeps the largest difference seen per quantity (printed at the end)."""
  MEASURED[name] = max(MEASURED.get(name, 0.0), float(value))
  return float(value)


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) -
                             np.asarray(b, np.float64))))


# --- The reference architectures in PyTorch (DESIGN section 5) ---------------


def conv(cin, cout, k, s=1, p=0):
  return nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)


def deconv(cin, cout, k, s=1, p=0):
  return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, bias=False)


def gn(c):
  return nn.GroupNorm(c // 4, c)  # 16 / 32 / 64 groups at nf = 64


def down(cin, zdim, nf):
  """Shared encoder of EDDeconv and ConfNet: modules 0 .. 12."""
  lrelu = lambda: nn.LeakyReLU(0.2)
  return [conv(cin, nf, 4, 2, 1), gn(nf), lrelu(),
          conv(nf, nf * 2, 4, 2, 1), gn(nf * 2), lrelu(),
          conv(nf * 2, nf * 4, 4, 2, 1), gn(nf * 4), lrelu(),
          conv(nf * 4, nf * 8, 4, 2, 1), lrelu(),
          conv(nf * 8, zdim, 4), nn.ReLU()]


class TorchEncoder(nn.Module):

  def __init__(self, cin, cout, nf):
    super().__init__()
    self.network = nn.Sequential(
        conv(cin, nf, 4, 2, 1), nn.ReLU(), conv(nf, nf * 2, 4, 2, 1), nn.ReLU(),
        conv(nf * 2, nf * 4, 4, 2, 1), nn.ReLU(),
        conv(nf * 4, nf * 8, 4, 2, 1), nn.ReLU(),
        conv(nf * 8, nf * 8, 4), nn.ReLU(), conv(nf * 8, cout, 1), nn.Tanh())

  def forward(self, x):
    return self.network(x).reshape(x.shape[0], -1)


class TorchEDDeconv(nn.Module):

  def __init__(self, cin, cout, zdim, nf, tanh):
    super().__init__()
    up = [deconv(zdim, nf * 8, 4), nn.ReLU(),
          conv(nf * 8, nf * 8, 3, 1, 1), nn.ReLU(),
          deconv(nf * 8, nf * 4, 4, 2, 1), gn(nf * 4), nn.ReLU(),
          conv(nf * 4, nf * 4, 3, 1, 1), gn(nf * 4), nn.ReLU(),
          deconv(nf * 4, nf * 2, 4, 2, 1), gn(nf * 2), nn.ReLU(),
          conv(nf * 2, nf * 2, 3, 1, 1), gn(nf * 2), nn.ReLU(),
          deconv(nf * 2, nf, 4, 2, 1), gn(nf), nn.ReLU(),
          conv(nf, nf, 3, 1, 1), gn(nf), nn.ReLU(),
          nn.Upsample(scale_factor=2, mode="nearest"),
          conv(nf, nf, 3, 1, 1), gn(nf), nn.ReLU(),
          conv(nf, nf, 5, 1, 2), gn(nf), nn.ReLU(),
          conv(nf, cout, 5, 1, 2)]
    self.network = nn.Sequential(*down(cin, zdim, nf), *up,
                                 *([nn.Tanh()] if tanh else []))

  def forward(self, x):
    return self.network(x)


class TorchConfNet(nn.Module):

  def __init__(self, cin, cout, zdim, nf):
    super().__init__()
    self.network = nn.Sequential(
        *down(cin, zdim, nf), deconv(zdim, nf * 8, 4), nn.ReLU(),
        deconv(nf * 8, nf * 4, 4, 2, 1), gn(nf * 4), nn.ReLU(),
        deconv(nf * 4, nf * 2, 4, 2, 1), gn(nf * 2), nn.ReLU())
    self.out_net1 = nn.Sequential(
        deconv(nf * 2, nf, 4, 2, 1), gn(nf), nn.ReLU(),
        deconv(nf, nf, 4, 2, 1), gn(nf), nn.ReLU(),
        conv(nf, cout, 5, 1, 2), nn.Softplus())
    self.out_net2 = nn.Sequential(conv(nf * 2, cout, 3, 1, 1), nn.Softplus())

  def forward(self, x):
    out = self.network(x)
    return self.out_net1(out), self.out_net2(out)


def reference_networks(nf, zdim, light_view_nf, conf_zdim, seed=0):
  """The five reference networks, randomly initialised (GroupNorm too)."""
  torch.manual_seed(seed)
  nets = {"netD": TorchEDDeconv(3, 1, zdim, nf, tanh=False),
          "netA": TorchEDDeconv(3, 3, zdim, nf, tanh=True),
          "netL": TorchEncoder(3, 4, light_view_nf),
          "netV": TorchEncoder(3, 6, light_view_nf),
          "netC": TorchConfNet(3, 2, conf_zdim, nf)}
  with torch.no_grad():
    for net in nets.values():
      for module in net.modules():
        if isinstance(module, nn.GroupNorm):
          module.weight.uniform_(0.5, 1.5)
          module.bias.normal_(0.0, 0.2)
  return nets


class MetricsTrace:
  """Stands for the reference trainer's `unsup3d.meters.MetricsTrace`."""

  def __init__(self):
    self.data = {"train": [{"loss": 0.25, "speed": 100.0}], "val": []}


MetricsTrace.__module__ = "unsup3d.meters"


def save_reference_checkpoint(nets, path, epoch=7, legacy=False):
  """torch.save of the reference trainer's checkpoint dict."""
  state = {name: net.state_dict() for name, net in nets.items()}
  for name, net in nets.items():
    # One Adam step on a copy, so that the optimizer state is not empty.
    trained = copy.deepcopy(net)
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-4,
                                 betas=(0.9, 0.999), weight_decay=5e-4)
    out = trained(torch.zeros(1, 3, S, S))
    sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    optimizer.step()
    state[name.replace("net", "optimizer")] = optimizer.state_dict()
  # The class must be importable while pickling, and is gone when loading.
  meters = types.ModuleType("unsup3d.meters")
  meters.MetricsTrace = MetricsTrace
  sys.modules["unsup3d"] = types.ModuleType("unsup3d")
  sys.modules["unsup3d.meters"] = meters
  try:
    state["metrics_trace"] = MetricsTrace()
    state["epoch"] = epoch
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
  finally:
    del sys.modules["unsup3d.meters"], sys.modules["unsup3d"]
  return path


def tf_model(sizes=None, **kwargs):
  """The Keras model at the test sizes, random VGG16 weights."""
  kwargs = {**(sizes or SMALL), "vgg_weights": None, **kwargs}
  model = model_lib.Unsup3D(**kwargs)
  model.build((None, S, S, 3))
  return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Reference networks, their checkpoint and the converted Keras model."""
  gin.clear_config()
  nets = reference_networks(**SMALL)
  path = str(tmp_path_factory.mktemp("reference") / "checkpoint007.pth")
  save_reference_checkpoint(nets, path)
  model = tf_model(lam_perc=1.0)
  import_torch.convert_state_dicts(
      model, import_torch.load_reference_checkpoint(path))
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 1, (B, S, S, 3)).astype(np.float32)
  return types.SimpleNamespace(nets=nets, path=path, model=model,
                               images=images)


def nchw(x):
  return torch.from_numpy(np.array(x, np.float32).transpose(0, 3, 1, 2)
                          .copy())


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def network_outputs_differ(model, nets, images):
  """Max |Keras - torch| of each network's outputs on `images` in [0, 1]."""
  x = images * 2.0 - 1.0
  diffs = {}
  with torch.no_grad():
    tx = nchw(x)
    for name, attribute in import_torch.NETWORKS.items():
      got = getattr(model, attribute)(tf.constant(x))
      want = nets[name](tx)
      if name == "netC":
        diffs["netC full"] = max_diff(got[0], nhwc(want[0]))
        diffs["netC quarter"] = max_diff(got[1], nhwc(want[1]))
      elif want.ndim == 4:
        diffs[name] = max_diff(got, nhwc(want))
      else:
        diffs[name] = max_diff(got, want.numpy())
  return diffs


# --- Networks ----------------------------------------------------------------


def test_network_outputs_match_reference(reference):
  diffs = network_outputs_differ(reference.model, reference.nets,
                                 reference.images)
  for name, diff in diffs.items():
    print(f"{name}: max |diff| {record(name, diff):.2e}")
  assert max(diffs.values()) <= 1e-4, diffs


def test_transposed_convolution_needs_no_spatial_flip():
  """ConvTranspose2d [in, out, kh, kw] -> Conv2DTranspose [kh, kw, out, in]."""
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(6, 5, 4, 4)).astype(np.float32)
  x = rng.normal(size=(2, 5, 5, 6)).astype(np.float32)
  want = nhwc(F.conv_transpose2d(nchw(x), torch.from_numpy(weight),
                                 stride=2, padding=1))
  layer = keras.layers.Conv2DTranspose(5, 4, strides=2, use_bias=False)
  layer.build((None, 5, 5, 6))
  errors = {}
  for flip in (False, True):
    kernel = weight.transpose(2, 3, 1, 0)
    layer.kernel.assign(kernel[::-1, ::-1] if flip else kernel)
    errors[flip] = max_diff(layer(x)[:, 1:-1, 1:-1], want)
  assert errors[False] <= 1e-5 and errors[True] > 1.0, errors


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_both_torch_save_formats_load_exactly(reference, tmp_path, legacy):
  path = save_reference_checkpoint(reference.nets, str(tmp_path / "c.pth"),
                                   legacy=legacy)
  assert zipfile.is_zipfile(path) != legacy
  state = import_torch.load_reference_checkpoint(path)
  for name, net in reference.nets.items():
    want = net.state_dict()
    assert list(state[name]) == list(want)
    for key, value in want.items():
      assert state[name][key].dtype == np.float32
      np.testing.assert_array_equal(state[name][key], value.numpy())
  adam = state["optimizerD"]
  assert adam["param_groups"][0]["weight_decay"] == 5e-4
  assert set(adam["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_metrics_trace_becomes_an_inert_stand_in(reference):
  state = import_torch.load_reference_checkpoint(reference.path)
  trace = state["metrics_trace"]
  assert isinstance(trace, import_torch.ForeignObject)
  assert trace.global_name == "unsup3d.meters.MetricsTrace"
  assert trace.state == {"data": {"train": [{"loss": 0.25, "speed": 100.0}],
                                  "val": []}}
  assert state["epoch"] == 7
  assert "unsup3d" not in sys.modules  # nothing was imported


def test_loading_and_converting_need_no_torch(reference, monkeypatch):
  """The importer parses torch.save files itself: torch is for tests only."""
  for name in [m for m in sys.modules if m.split(".")[0] == "torch"]:
    # From here on `import torch` fails.
    monkeypatch.setitem(sys.modules, name, None)
  model = tf_model(lam_perc=0.0)
  import_torch.convert_state_dicts(
      model, import_torch.load_reference_checkpoint(reference.path))
  monkeypatch.undo()
  diffs = network_outputs_differ(model, reference.nets, reference.images)
  assert max(diffs.values()) <= 1e-4, diffs


@pytest.mark.slow
def test_paper_size_networks_match(tmp_path):
  """nf 64, zdim 256 (D, A), 32 (L, V), 128 (C): the reference's groups."""
  gin.clear_config()
  nets = reference_networks(**PAPER, seed=3)
  path = save_reference_checkpoint(nets, str(tmp_path / "paper.pth"))
  model = tf_model(PAPER, lam_perc=0.0)
  import_torch.convert_state_dicts(
      model, import_torch.load_reference_checkpoint(path))
  images = np.random.default_rng(2).uniform(0, 1, (B, S, S, 3))
  diffs = network_outputs_differ(model, nets, images.astype(np.float32))
  for name, diff in diffs.items():
    print(f"paper {name}: max |diff| {record('paper ' + name, diff):.2e}")
  assert max(diffs.values()) <= 1e-4, diffs


# --- Geometry and sampling ---------------------------------------------------


def torch_intrinsics(size=S, fov=10.0):
  f = (size - 1) / 2 / np.tan(np.radians(fov) / 2)
  c = (size - 1) / 2
  return torch.tensor([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=torch.float32)


def torch_lift(depth, k):
  """d K^-1 [u, v, 1]: the reference's depth_to_3d_grid, `[B, H, W, 3]`."""
  _, h, w = depth.shape
  v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
  pixels = torch.stack([u, v, torch.ones_like(u)], -1).float()
  return pixels @ torch.inverse(k).T * depth[..., None]


def torch_normals(depth, k):
  """The reference's get_normal_from_depth: pad with (0, 0, 1), normalise."""
  b, h, w = depth.shape
  p = torch_lift(depth, k)
  tu = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
  tv = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
  normal = torch.cross(tu, tv, dim=3)
  z = torch.tensor([0.0, 0.0, 1.0])
  normal = torch.cat([z.repeat(b, h - 2, 1, 1), normal,
                      z.repeat(b, h - 2, 1, 1)], 2)
  normal = torch.cat([z.repeat(b, 1, w, 1), normal, z.repeat(b, 1, w, 1)], 1)
  return normal / ((normal ** 2).sum(3, keepdim=True) ** 0.5 + EPS)


def torch_rotation(view):
  """R = Rz Ry Rx `[B, 3, 3]` from (rx, ry, rz) radians."""
  rx, ry, rz = view[:, 0], view[:, 1], view[:, 2]
  one, zero = torch.ones_like(rx), torch.zeros_like(rx)
  m = lambda *rows: torch.stack([torch.stack(r, -1) for r in rows], -2)
  mx = m((one, zero, zero), (zero, rx.cos(), -rx.sin()),
         (zero, rx.sin(), rx.cos()))
  my = m((ry.cos(), zero, ry.sin()), (zero, one, zero),
         (-ry.sin(), zero, ry.cos()))
  mz = m((rz.cos(), -rz.sin(), zero), (rz.sin(), rz.cos(), zero),
         (zero, zero, one))
  return mz @ my @ mx


def torch_inverse_warp_grid(recon_depth, view, k, center_z=1.0):
  """The reference's get_inv_warped_2d_grid `[B, H, W, 2]` in [-1, 1]."""
  b, h, w = recon_depth.shape
  points = torch_lift(recon_depth, k).reshape(b, -1, 3)
  center = torch.tensor([0.0, 0.0, center_z]).view(1, 1, 3)
  points = points - view[:, None, 3:]
  points = (points - center) @ torch_rotation(view) + center  # R^T p
  pixels = (points / points[..., 2:]) @ k.T
  size = torch.tensor([w - 1.0, h - 1.0]).view(1, 1, 2)
  return (pixels[..., :2] / size * 2 - 1).reshape(b, h, w, 2)


def smooth_depth(rng, batch=B, low=0.9, high=1.1):
  """Random smooth depth maps with a few steep steps, `[B, S, S]`."""
  coarse = rng.normal(size=(batch, 6, 6, 1)).astype(np.float32)
  depth = tf.image.resize(coarse, [S, S], method="bicubic")[..., 0].numpy()
  depth[:, 20:30, 35:] += 0.8  # a step: large normals
  depth = np.tanh(depth)
  return (low + (depth + 1) / 2 * (high - low)).astype(np.float32)


def test_normals_from_depth_match_reference():
  depth = smooth_depth(np.random.default_rng(0))
  got = renderer_lib.Renderer(image_size=S).normals_from_depth(depth)
  want = torch_normals(torch.from_numpy(depth), torch_intrinsics())
  diff = record("normals", max_diff(got, want))
  print(f"normals: max |diff| {diff:.2e}")
  assert diff <= 1e-5


def random_views(rng, batch=B):
  rotation = rng.uniform(-1, 1, (batch, 3)) * np.radians(60)
  translation = rng.uniform(-0.1, 0.1, (batch, 3))
  return np.concatenate([rotation, translation], -1).astype(np.float32)


def test_inverse_warp_grid_matches_reference():
  rng = np.random.default_rng(1)
  depth = smooth_depth(rng, low=0.85, high=1.15)
  view = random_views(rng)
  got = renderer_lib.Renderer(image_size=S).inverse_warp_grid(depth, view)
  want = torch_inverse_warp_grid(torch.from_numpy(depth),
                                 torch.from_numpy(view), torch_intrinsics())
  diff = record("inverse-warp grid", max_diff(got, want))
  print(f"inverse-warp grid: max |diff| {diff:.2e} (|grid| up to "
        f"{np.abs(want.numpy()).max():.2f})")
  assert diff <= 1e-5


def test_bilinear_sampling_matches_grid_sample():
  """Values and gradients; a non-square image catches an x/y swap."""
  rng = np.random.default_rng(2)
  image = rng.normal(size=(B, 48, 64, 3)).astype(np.float32)
  grid = rng.uniform(-1.1, 1.1, (B, 40, 50, 2)).astype(np.float32)
  weights = rng.normal(size=(B, 40, 50, 3)).astype(np.float32)
  tf_image, tf_grid = tf.constant(image), tf.constant(grid)
  with tf.GradientTape() as tape:
    tape.watch([tf_image, tf_grid])
    got = sampling.bilinear_sample(tf_image, tf_grid)
    objective = tf.reduce_sum(got * weights)
  got_d_image, got_d_grid = tape.gradient(objective, [tf_image, tf_grid])
  t_image = nchw(image).requires_grad_()
  t_grid = torch.from_numpy(grid).requires_grad_()
  want = F.grid_sample(t_image, t_grid, mode="bilinear", padding_mode="zeros",
                       align_corners=True)
  (want * nchw(weights)).sum().backward()
  diffs = {"value": max_diff(got, nhwc(want)),
           "d image": max_diff(got_d_image, nhwc(t_image.grad)),
           "d grid": max_diff(got_d_grid, t_grid.grad.numpy())}
  for name, diff in diffs.items():
    print(f"bilinear sampling {name}: max |diff| "
          f"{record('sampling ' + name, diff):.2e}")
  assert diffs["value"] <= 1e-5 and diffs["d image"] <= 1e-5
  # d grid is (W - 1) / 2 times an image difference: larger round-off.
  scale = np.abs(t_grid.grad.numpy()).max()
  print(f"bilinear sampling d grid: max |d grid| {scale:.2e}, relative "
        f"{record('sampling d grid relative', diffs['d grid'] / scale):.1e}")
  assert diffs["d grid"] <= 1e-6 * scale


# --- Losses ------------------------------------------------------------------


def torch_vgg(vgg_features):
  """torchvision's vgg16().features[:16] (relu3_3) with the Keras weights."""
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256]
  layers, cin = [], 3
  for c in cfg:
    if c == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
      cin = c
  vgg = nn.Sequential(*layers)
  keras_convs = [l for l in vgg_features.features.layers if l.weights]
  torch_convs = [m for m in vgg if isinstance(m, nn.Conv2d)]
  assert len(keras_convs) == len(torch_convs) == 7
  with torch.no_grad():
    for k, t in zip(keras_convs, torch_convs):
      t.weight.copy_(torch.from_numpy(k.kernel.numpy().transpose(3, 2, 0, 1)))
      t.bias.copy_(torch.from_numpy(k.bias.numpy()))
  return vgg.requires_grad_(False)


def torch_photometric(im1, im2, mask=None, sigma=None):
  loss = (im1 - im2).abs()
  if sigma is not None:
    loss = loss * 2 ** 0.5 / (sigma + EPS) + (sigma + EPS).log()
  if mask is None:
    return loss.mean()
  mask = mask.expand_as(loss)
  return (loss * mask).sum() / mask.sum()


def torch_perceptual(vgg, im1, im2, mask=None, sigma=None):
  """The reference's PerceptualLoss on relu3_3, images in [-1, 1]."""
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  features = vgg((torch.cat([im1, im2], 0) / 2 + 0.5 - mean) / std)
  f1, f2 = torch.chunk(features, 2, dim=0)
  loss = (f1 - f2) ** 2
  if sigma is not None:
    loss = loss / (2 * sigma ** 2 + EPS) + (sigma + EPS).log()
  if mask is None:
    return loss.mean()
  kernel = (mask.shape[2] // loss.shape[2], mask.shape[3] // loss.shape[3])
  mask = F.avg_pool2d(mask, kernel_size=kernel, stride=kernel).expand_as(loss)
  return (loss * mask).sum() / mask.sum()


def test_losses_with_confidence_match_reference(reference):
  rng = np.random.default_rng(3)
  im1, im2 = (tf.constant(rng.uniform(-1, 1, (B, S, S, 3)), tf.float32)
              for _ in range(2))
  mask = np.ones((B, S, S), np.float32)
  mask[:, :, :10] = 0.0
  mask[0, 30:41, 5:50] = 0.0
  mask = tf.constant(mask)
  sigma = tf.constant(rng.uniform(0.2, 2.0, (B, S, S, 1)), tf.float32)
  sigma_p = tf.constant(rng.uniform(0.2, 2.0, (B, S // 4, S // 4, 1)),
                        tf.float32)
  vgg = reference.model.vgg
  t_vgg = torch_vgg(vgg)
  tmask = torch.from_numpy(mask.numpy())[:, None]
  with torch.no_grad():
    for conf in (True, False):
      suffix = "" if conf else " (no confidence)"
      got = losses.photometric_loss(im1, im2, mask, sigma if conf else None)
      want = torch_photometric(nchw(im1), nchw(im2), tmask,
                               nchw(sigma) if conf else None)
      diff = abs(float(got) - float(want)) / abs(float(want))
      print(f"photometric{suffix}: {float(got):.6f} vs {float(want):.6f}, "
            f"relative diff {record('photometric' + suffix, diff):.1e}")
      assert diff <= 1e-5
      got = losses.perceptual_loss(vgg(im1), vgg(im2), mask,
                                   sigma_p if conf else None)
      want = torch_perceptual(t_vgg, nchw(im1), nchw(im2), tmask,
                              nchw(sigma_p) if conf else None)
      diff = abs(float(got) - float(want)) / abs(float(want))
      print(f"perceptual{suffix}: {float(got):.6f} vs {float(want):.6f}, "
            f"relative diff {record('perceptual' + suffix, diff):.1e}")
      assert diff <= 1e-5


# --- The model end to end ----------------------------------------------------


def torch_forward(nets, vgg, images, recon_depth, lam_flip=0.5, lam_perc=1.0,
                  min_depth=0.9, max_depth=1.1):
  """The reference's Unsup3D.forward and losses, depth raster given.

  Args:
    nets: the reference networks.
    vgg: relu3_3 feature extractor, or None without the perceptual loss.
    images: `[B, 3, S, S]` in [0, 1].
    recon_depth: `[2B, S, S]` the rasterised depth (no gradient, like the
      constant it is here).

  Returns:
    Dict of tensors, NCHW.
  """
  x = images * 2 - 1
  b, _, h, w = x.shape
  rescale = lambda t, low, high: (1 + t) / 2 * high + (1 - t) / 2 * low
  raw = nets["netD"](x).squeeze(1)
  depth = rescale((raw - raw.view(b, -1).mean(1).view(b, 1, 1)).tanh(),
                  min_depth, max_depth)
  out = {"depth_unbordered": depth}
  border = F.pad(torch.zeros(1, h, w - 4), (2, 2), mode="constant", value=1)
  depth = depth * (1 - border) + border * (0.7 * max_depth + 0.3 * min_depth)
  depth2 = torch.cat([depth, depth.flip(2)], 0)
  albedo = nets["netA"](x)
  albedo2 = torch.cat([albedo, albedo.flip(3)], 0)
  sigma_l1, sigma_perc = nets["netC"](x)
  light = nets["netL"](x).repeat(2, 1)
  ambient, diffuse = rescale(light[:, :1], 0, 1), rescale(light[:, 1:2], 0, 1)
  direction = torch.cat([light[:, 2:], torch.ones(2 * b, 1)], 1)
  direction = direction / (direction ** 2).sum(1, keepdim=True) ** 0.5
  k = torch_intrinsics()
  normal = torch_normals(depth2, k)
  shading = (normal * direction.view(-1, 1, 1, 3)).sum(3).clamp(min=0)
  shading = shading.unsqueeze(1)
  canon = (albedo2 / 2 + 0.5) * (ambient.view(-1, 1, 1, 1) +
                                 diffuse.view(-1, 1, 1, 1) * shading) * 2 - 1
  view = nets["netV"](x).repeat(2, 1)
  view = torch.cat([view[:, :3] * np.pi / 180 * 60, view[:, 3:5] * 0.1,
                    view[:, 5:] * 0.1], 1)
  grid = torch_inverse_warp_grid(recon_depth, view, k)
  recon = F.grid_sample(canon, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
  margin = (max_depth - min_depth) / 2
  valid = (recon_depth < max_depth + margin).float()
  both = (valid[:b] * valid[b:]).repeat(2, 1, 1).unsqueeze(1).detach()
  recon = recon * both
  out.update(canon_depth=depth, canon_albedo=albedo, canon_normal=normal[:b],
             canon_diffuse_shading=shading[:b], canon_image=canon[:b],
             light=torch.cat([ambient, diffuse, light[:, 2:]], 1)[:b],
             light_direction=direction[:b], view=view[:b],
             conf_sigma_l1=sigma_l1, conf_sigma_perc=sigma_perc,
             recon_image=recon[:b], recon_image_flip=recon[b:],
             recon_mask=both[:b, 0])
  terms = {
      "photometric": torch_photometric(recon[:b], x, both[:b],
                                       sigma_l1[:, :1]),
      "photometric_flip": torch_photometric(recon[b:], x, both[b:],
                                            sigma_l1[:, 1:])}
  total = terms["photometric"] + lam_flip * terms["photometric_flip"]
  if vgg is not None:
    terms["perceptual"] = torch_perceptual(vgg, recon[:b], x, both[:b],
                                           sigma_perc[:, :1])
    terms["perceptual_flip"] = torch_perceptual(vgg, recon[b:], x, both[b:],
                                                sigma_perc[:, 1:])
    total = total + lam_perc * (terms["perceptual"] +
                                lam_flip * terms["perceptual_flip"])
  terms["total"] = total
  return out, terms


def fixed_raster(model, images, monkeypatch):
  """Replaces the model's depth raster by its own output, as a constant."""
  out = model(images)
  fixed = tf.stop_gradient(tf.concat([out["recon_depth"],
                                      out["recon_depth_flip"]], 0))
  monkeypatch.setattr(model.renderer, "warp_canon_depth",
                      lambda depth, view: fixed)
  return fixed.numpy()


# (model key, torch key, map to [-1, 1] network range)
_OUTPUTS = [("canon_depth", "canon_depth", False),
            ("canon_albedo", "canon_albedo", True),
            ("canon_normal", "canon_normal", False),
            ("canon_diffuse_shading", "canon_diffuse_shading", False),
            ("canon_image", "canon_image", True),
            ("light", "light", False),
            ("light_direction", "light_direction", False),
            ("view", "view", False),
            ("conf_sigma_l1", "conf_sigma_l1", False),
            ("conf_sigma_perc", "conf_sigma_perc", False),
            ("recon_image", "recon_image", True),
            ("recon_image_flip", "recon_image_flip", True),
            ("recon_mask", "recon_mask", False)]


def test_model_outputs_losses_and_gradients_match_reference(reference,
                                                            monkeypatch):
  """The whole forward pass, loss and gradient, rasterised depth shared.

  The reference's depth raster (neural_renderer) has its own approximate
  gradients; both sides here get the same rasterised depth as a constant,
  so gradients reach netD through normals and shading, netA through the
  albedo, netL through the light, netV through the sampling grid and netC
  through the confidence terms: every weight of the model.
  """
  model, nets = reference.model, reference.nets
  images = reference.images
  recon_depth = fixed_raster(model, images, monkeypatch)
  assert 0 < recon_depth.mean() and (recon_depth >= 1.2).any()  # background
  variables = {}
  for name, attribute in import_torch.NETWORKS.items():
    layout = import_torch.reference_layout(getattr(model, attribute))
    variables[name] = {key: variable for key, (variable, _) in layout.items()}
  flat = [v for net in variables.values() for v in net.values()]
  with tf.GradientTape() as tape:
    out = model(images)
    terms = model.compute_losses(images, out)
  grads = dict(zip([id(v) for v in flat], tape.gradient(terms["total"], flat)))

  for net in nets.values():
    net.zero_grad()
  t_out, t_terms = torch_forward(nets, torch_vgg(model.vgg), nchw(images),
                                 torch.from_numpy(recon_depth))
  t_terms["total"].backward()

  for key, t_key, to_network_range in _OUTPUTS:
    got = out[key].numpy() * (2 if to_network_range else 1) - (
        1 if to_network_range else 0)
    want = t_out[t_key].detach().numpy()
    if want.ndim == 4 and got.shape != want.shape:
      want = want.transpose(0, 2, 3, 1)
    diff = record(f"end-to-end {key}", max_diff(got, want))
    print(f"output {key}: max |diff| {diff:.2e}")
    assert diff <= 1e-4, key

  for key, value in t_terms.items():
    value = value.detach()
    diff = abs(float(terms[key]) - float(value)) / abs(float(value))
    print(f"loss {key}: {float(terms[key]):.6f} vs {float(value):.6f}, "
          f"relative diff {record('end-to-end loss ' + key, diff):.1e}")
    assert diff <= 1e-5, key

  for name, net in nets.items():
    params = dict(net.named_parameters())
    scale = max(float(p.grad.abs().max()) for p in params.values())
    diff = 0.0
    for key, variable in variables[name].items():
      want = params[key].grad.numpy()
      if want.ndim == 4:
        want = want.transpose(2, 3, 1, 0)
      diff = max(diff, max_diff(grads[id(variable)], want))
    print(f"gradient {name}: max |diff| {diff:.2e}, max |grad| {scale:.2e}, "
          f"relative {record('gradient ' + name, diff / scale):.1e}")
    assert diff <= 1e-4 * scale, name


def test_depth_smoothness_matches_reference(reference, monkeypatch):
  model = tf_model(lam_perc=0.0, lam_depth_sm=0.1)
  import_torch.convert_state_dicts(
      model, import_torch.load_reference_checkpoint(reference.path))
  images = reference.images
  recon_depth = fixed_raster(model, images, monkeypatch)
  got = model.compute_losses(images, model(images))["depth_smoothness"]
  with torch.no_grad():
    t_out, _ = torch_forward(reference.nets, None, nchw(images),
                             torch.from_numpy(recon_depth))
  d = t_out["depth_unbordered"] / 0.2
  want = ((d[:, :-1, :] - d[:, 1:, :]).abs().mean() +
          (d[:, :, :-1] - d[:, :, 1:]).abs().mean())
  assert float(got) == pytest.approx(float(want), rel=1e-5)


# --- Mapping errors ----------------------------------------------------------


@pytest.fixture(scope="module")
def state(reference):
  return import_torch.load_reference_checkpoint(reference.path)


def edited(state, net, **changes):
  """A copy of `state` whose `net` state dict has `changes` (None deletes)."""
  copy = dict(state)
  copy[net] = dict(state[net])
  for key, value in changes.items():
    key = key.replace("__", ".")
    if value is None:
      del copy[net][key]
    else:
      copy[net][key] = value
  return copy


@pytest.mark.parametrize("changes,message", [
    ({"network__3__weight": None}, "netD: network.3.weight is missing"),
    ({"network__99__weight": np.zeros((4, 4, 3, 3), np.float32)},
     "netD: unexpected tensor network.99.weight"),
    ({"network__0__weight": np.zeros((16, 3, 3, 3), np.float32)},
     "netD: network.0.weight has shape (16, 3, 3, 3), expected (16, 3, 4, 4) "
     "for layer conv2d"),
    ({"network__1__bias": np.zeros((8,), np.float32)},
     "netD: network.1.bias has shape (8,), expected (16,) for layer "
     "group_normalization"),
], ids=["missing", "extra", "conv shape", "groupnorm shape"])
def test_bad_tensors_are_named_and_nothing_is_assigned(state, changes,
                                                       message):
  model = tf_model(lam_perc=0.0)
  before = [v.numpy() for v in model.trainable_variables]
  with pytest.raises(import_torch.CheckpointError) as error:
    import_torch.convert_state_dicts(model, edited(state, "netD", **changes))
  assert message in str(error.value)
  for old, variable in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(old, variable.numpy())


def test_confidence_network_must_match_the_config(state):
  no_conf = tf_model(lam_perc=0.0, use_conf_map=False)
  with pytest.raises(import_torch.CheckpointError,
                     match="Unsup3D.use_conf_map = True"):
    import_torch.convert_state_dicts(no_conf, state)
  without_c = {k: v for k, v in state.items() if k != "netC"}
  import_torch.convert_state_dicts(no_conf, without_c)
  with pytest.raises(import_torch.CheckpointError,
                     match="no netC .*use_conf_map = False"):
    import_torch.convert_state_dicts(tf_model(lam_perc=0.0), without_c)


def test_wrong_sizes_in_the_config_are_reported(state):
  with pytest.raises(import_torch.CheckpointError) as error:
    import_torch.convert_state_dicts(tf_model(dict(SMALL, nf=32),
                                              lam_perc=0.0), state)
  assert "Unsup3D.nf" in str(error.value)
  assert "netD: network.0.weight has shape (16, 3, 4, 4), expected " \
         "(32, 3, 4, 4)" in str(error.value)


# --- Malicious files ---------------------------------------------------------


def torch_zip(path, data_pkl, root="archive"):
  """A torch.save-style zip around a hand-made data.pkl."""
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{root}/data.pkl", data_pkl)
    archive.writestr(f"{root}/byteorder", "little")
    archive.writestr(f"{root}/version", "3\n")
  return str(path)


def legacy_stream(path, first_pickle):
  with open(path, "wb") as f:
    f.write(first_pickle)
  return str(path)


class CallsPosixSystem:
  """What a real malicious object pickles to: REDUCE of posix.system."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def global_call(module, name, argument, protocol=2):
  """Hand-made pickle: GLOBAL module.name, REDUCE (argument,)."""
  arg = argument.encode()
  if protocol >= 4:  # STACK_GLOBAL
    head = (b"\x80\x04" + b"\x8c" + bytes([len(module)]) + module.encode() +
            b"\x8c" + bytes([len(name)]) + name.encode() + b"\x93")
  else:
    head = b"\x80\x02c" + f"{module}\n{name}\n".encode()
  return (head + b"X" + len(arg).to_bytes(4, "little") + arg +
          b"\x85R.")


def checkpoint_with(payload):
  """A reference-looking dict whose metrics_trace is `payload`."""
  return pickle.dumps({"netD": {}, "metrics_trace": payload, "epoch": 1},
                      protocol=2)


@pytest.mark.parametrize("make,name", [
    (lambda cmd: global_call("os", "system", cmd), "os.system"),
    (lambda cmd: global_call("os", "system", cmd, protocol=4), "os.system"),
    (lambda cmd: global_call("builtins", "eval",
                             f"__import__('os').system('{cmd}')"),
     "builtins.eval"),
    (lambda cmd: global_call("subprocess", "Popen", cmd), "subprocess.Popen"),
    (lambda cmd: checkpoint_with(CallsPosixSystem(cmd)), "posix.system"),
    (lambda cmd: b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.", "os.system"),
], ids=["os.system", "stack_global", "eval", "Popen", "nested __reduce__",
        "protocol 0"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickles_are_refused(tmp_path, make, name, container):
  target = tmp_path / "pwned"
  data = make(f"echo pwned > {target}")
  if container == "zip":
    path = torch_zip(tmp_path / "evil.pth", data)
  else:
    path = legacy_stream(tmp_path / "evil.pth", data)
  with pytest.raises(import_torch.UnsafeCheckpointError,
                     match=f"Refusing to call {name}"):
    import_torch.load_reference_checkpoint(path)
  assert not target.exists()


def test_unknown_class_without_a_call_stays_inert(tmp_path):
  """NEWOBJ + BUILD of any global builds a stand-in; nothing runs."""
  target = tmp_path / "pwned"
  text = lambda s: b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()
  # {'netD': {}, 'x': <os.system.__new__(os.system), BUILD {'a': command}>}:
  # EMPTY_DICT MARK key EMPTY_DICT key GLOBAL EMPTY_TUPLE NEWOBJ EMPTY_DICT
  # key value SETITEM BUILD SETITEMS STOP.
  data = (b"\x80\x02}(" + text("netD") + b"}" + text("x") +
          b"cos\nsystem\n)\x81}" + text("a") +
          text(f"echo x > {target}") + b"sbu.")
  state = import_torch.load_reference_checkpoint(
      torch_zip(tmp_path / "c.pth", data))
  assert isinstance(state["x"], import_torch.ForeignObject)
  assert state["x"].global_name == "os.system"
  assert not target.exists()


def test_build_on_allowed_globals_is_refused(tmp_path):
  # GLOBAL collections.OrderedDict, BUILD {} : would modify the allowed
  # object for every later load.
  data = b"\x80\x02ccollections\nOrderedDict\n}b."
  with pytest.raises(import_torch.UnsafeCheckpointError, match="modify"):
    import_torch.load_reference_checkpoint(torch_zip(tmp_path / "c.pth", data))


def test_corrupt_files_raise_checkpoint_errors(tmp_path, reference):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a checkpoint")
  with pytest.raises(import_torch.CheckpointError, match="garbage.pth"):
    import_torch.load_reference_checkpoint(str(garbage))
  # A tensor whose strides reach past its storage.
  with zipfile.ZipFile(reference.path) as archive:
    root = archive.namelist()[0].split("/")[0]
    pkl = archive.read(f"{root}/data.pkl")
  bad = pkl.replace(b"K\x10K\x03K\x04K\x04", b"K\x10K\x03K\x04K\x05", 1)
  assert bad != pkl
  path = tmp_path / "overrun.pth"
  with zipfile.ZipFile(reference.path) as src, \
       zipfile.ZipFile(path, "w") as dst:
    for item in src.namelist():
      dst.writestr(item, bad if item.endswith("data.pkl") else src.read(item))
  with pytest.raises(import_torch.CheckpointError, match="overruns"):
    import_torch.load_reference_checkpoint(str(path))


# --- Files claiming more memory than they hold ---------------------------------
#
# A few hundred bytes can claim a tensor of billions of elements. The files
# are made here with pickle and zipfile, not torch.save, so that every claim
# (storage element counts, sizes, strides, zip member sizes) is under the
# test's control; each is loaded in a child process with tracemalloc on and
# an address-space cap, so that a regression fails fast instead of taking the
# machine's memory.

READER = os.path.join(ROOT, "tf_unsup3d", "tools", "torch_reader.py")


class FakeStorage:
  """A storage as a persistent id: ('storage', torch.<dtype>, key, 'cpu', n)."""

  def __init__(self, key, numel, dtype="FloatStorage"):
    self.key, self.numel, self.dtype = key, numel, dtype


class FakeTensor:
  """Pickles as torch's _rebuild_tensor_v2 of a FakeStorage, any layout."""

  def __init__(self, storage, size, stride, offset=0):
    self.args = (storage, offset, tuple(size), tuple(stride), False,
                 collections.OrderedDict())

  def __reduce__(self):
    return torch._utils._rebuild_tensor_v2, self.args


class OldTensor:
  """Pickles as PyTorch < 0.3 did: torch.FloatTensor(), then BUILD with
  (storage, offset, size, stride) (torchvision's 2017 model files)."""

  def __init__(self, storage, size, stride, offset=0):
    self.state = (storage, offset, tuple(size), tuple(stride))

  def __reduce__(self):
    return torch.FloatTensor, (), self.state


class _StoragePickler(pickle.Pickler):

  def persistent_id(self, obj):
    if isinstance(obj, FakeStorage):
      return ("storage", getattr(torch, obj.dtype), obj.key, "cpu", obj.numel)
    return None


def storage_pickle(obj):
  buffer = io.BytesIO()
  _StoragePickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def write_zip(path, obj, records):
  """torch.save's zip layout; `records` maps storage key -> bytes, or to
  an int n for n zero bytes (deflated, written in chunks)."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", storage_pickle(obj))
    archive.writestr("archive/byteorder", "little")
    for key, data in records.items():
      if isinstance(data, int):
        with archive.open(f"archive/data/{key}", "w", force_zip64=True) as f:
          for start in range(0, data, 1 << 20):
            f.write(bytes(min(1 << 20, data - start)))
      else:
        archive.writestr(f"archive/data/{key}", data)
  return str(path)


def write_legacy(path, obj, records):
  """torch.save's legacy stream; `records` maps key -> (numel, bytes)."""
  with open(path, "wb") as f:
    for header in (0x1950a86a20f9469cfc6c, 1001,
                   {"protocol_version": 1001, "little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(storage_pickle(obj))
    pickle.dump(list(records), f, protocol=2)
    for numel, data in records.values():
      f.write(np.int64(numel).tobytes() + data)
  return str(path)


_MEASURE = r"""
import importlib.util, json, resource, sys, tracemalloc
cap = 1 << 30  # address space: numpy needs ~0.1 GiB, the claims are 6+ GiB
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
spec = importlib.util.spec_from_file_location("torch_reader", sys.argv[1])
reader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reader)
def shapes(obj, prefix=""):
  if isinstance(obj, dict):
    return {k: v for key, value in obj.items()
            for k, v in shapes(value, prefix + key + ".").items()}
  return {prefix[:-1]: list(obj.shape)}
results = []
for path, kwargs in json.loads(sys.argv[2]):
  tracemalloc.start()
  try:
    outcome = {"shapes": shapes(reader.load_torch_file(path, **kwargs))}
  except Exception as e:  # reported to the test
    outcome = {"error": type(e).__name__, "message": str(e)}
  outcome["peak"] = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  results.append(outcome)
print(json.dumps(results))
"""


def load_measured(*loads, reader=READER):
  """Loads (path, kwargs) pairs in a child process: outcomes, peak bytes."""
  result = subprocess.run(
      [sys.executable, "-c", _MEASURE, reader,
       json.dumps([[str(p), kw] for p, kw in loads])],
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)


MiB = 1 << 20
HUGE = 40000  # 40000 x 40000 float32 = 6.4 GB


def expanded_checkpoint(path, legacy, n=HUGE):
  """torch.save of a one-element tensor expanded to n x n (strides 0)."""
  tensor = torch.ones(1).expand(n, n)
  assert tensor.stride() == (0, 0)
  torch.save({"netD": {"w": tensor}}, path,
             _use_new_zipfile_serialization=not legacy)
  return str(path)


def test_tiny_files_claiming_huge_tensors_are_refused_cheaply(tmp_path):
  """Default limits (2**28 elements): refused, naming the tensor and limit,
  with peak memory a tiny fraction of the 6 GB claimed."""
  zip_path = expanded_checkpoint(tmp_path / "expand_zip.pth", legacy=False)
  legacy_path = expanded_checkpoint(tmp_path / "expand_legacy.pth",
                                    legacy=True)
  # A legacy stream claiming a 1.5e9-element storage it does not hold.
  claims = write_legacy(
      tmp_path / "claims.pth",
      {"w": FakeTensor(FakeStorage("0", 1_500_000_000), [1_500_000_000], [1])},
      {"0": (1_500_000_000, b"")})
  assert os.path.getsize(claims) < 400
  assert os.path.getsize(zip_path) < 4096
  results = load_measured((zip_path, {}), (legacy_path, {}), (claims, {}),
                          (claims, {"max_tensor_elements": 2**31}))
  for path, result in zip((zip_path, legacy_path, claims, claims), results):
    assert result["peak"] < 4 * MiB, result
    assert "error" in result, result
    assert path in result["message"]
  for result in results[:2]:
    assert result["error"] == "CheckpointLimitError"
    assert ("(size (40000, 40000), stride (0, 0)" in result["message"]
            and "claims 1600000000 elements, over the limit of 268435456"
            in result["message"]), result
    assert "max_tensor_elements" in result["message"]
  assert results[2]["error"] == "CheckpointLimitError"
  assert "Storage 0 claims 1500000000 elements" in results[2]["message"]
  # Above the element limit, the claim still meets the file's real size.
  assert results[3]["error"] == "CheckpointError"
  assert "more than the whole file's" in results[3]["message"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_broadcast_tensors_stay_views(tmp_path, legacy):
  """Under the limits, an expanded tensor is a read-only view of its one
  element: 10000 x 10000 (400 MB as a copy) costs no memory."""
  path = expanded_checkpoint(tmp_path / "expand.pth", legacy, n=10000)
  [result] = load_measured((path, {}))
  assert result["shapes"] == {"netD.w": [10000, 10000]}, result
  assert result["peak"] < 4 * MiB, result
  state = import_torch.load_reference_checkpoint(path)
  w = state["netD"]["w"]
  assert w.shape == (10000, 10000) and w.strides == (0, 0)
  assert not w.flags.writeable
  assert w[0, 0] == w[-1, -1] == 1.0


def test_deflated_records_are_read_only_as_far_as_allowed(tmp_path):
  """A 64 MiB zero record compresses to ~64 kB: the claim is checked
  against max_total_bytes before inflating, and a record larger than its
  tensors need is inflated only as far as they need."""
  big = 16 * MiB  # float32 elements: 64 MiB
  bomb = write_zip(tmp_path / "bomb.pth",
                   {"w": FakeTensor(FakeStorage("0", big), [big], [1])},
                   {"0": 4 * big})
  assert os.path.getsize(bomb) < MiB
  # The same record, claimed by a 16-element storage.
  small = write_zip(tmp_path / "small.pth",
                    {"w": FakeTensor(FakeStorage("0", 16), [4, 4], [4, 1])},
                    {"0": 4 * big})
  # A record whose header promises 64 bytes but holds only 8.
  short = write_zip(tmp_path / "short.pth",
                    {"w": FakeTensor(FakeStorage("0", 16), [16], [1])},
                    {"0": bytes(8)})
  results = load_measured((bomb, {"max_total_bytes": 8 * MiB}),
                          (bomb, {}), (small, {}), (short, {}))
  refused, allowed, partial, truncated = results
  assert refused["error"] == "CheckpointLimitError", refused
  assert ("Record archive/data/0 needs 67108864 bytes" in refused["message"]
          and "limit of 8388608 bytes" in refused["message"]
          and "max_total_bytes" in refused["message"]), refused
  assert refused["peak"] < MiB, refused
  # Within the (default) limits the record loads, once, in place.
  assert allowed["shapes"] == {"w": [big]}, allowed
  assert allowed["peak"] < 4 * big + 4 * MiB, allowed
  assert partial["shapes"] == {"w": [4, 4]}, partial
  assert partial["peak"] < MiB, partial
  assert truncated["error"] == "CheckpointError"
  assert "holds 8 bytes, fewer than the 64" in truncated["message"]


def test_tensor_copies_count_against_the_byte_limit(tmp_path):
  """Many slices of one storage copy it many times: the total is capped."""
  n = MiB  # float32 elements: 4 MiB per slice
  storage = FakeStorage("0", n + 1)
  slices = {f"w{i}": FakeTensor(storage, [n], [1], offset=1)
            for i in range(64)}  # 256 MiB of copies from a 4 MiB record
  path = write_zip(tmp_path / "slices.pth", slices, {"0": bytes(4 * (n + 1))})
  [result] = load_measured((path, {"max_total_bytes": 64 * MiB}))
  assert result["error"] == "CheckpointLimitError", result
  assert "over the limit of 67108864 bytes" in result["message"]
  assert result["peak"] < 80 * MiB, result


def test_ordinary_layouts_load_exactly(tmp_path):
  """Slices, transposes, offsets and shared storages as torch gives them."""
  base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
  tensors = {"whole": base, "t": base.transpose(0, 2),
             "slice": base[1, :, 2:4], "offset": base.flatten()[7:19],
             "int": torch.arange(5),
             "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}
  for legacy in (False, True):
    path = tmp_path / f"layouts_{legacy}.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
    state = import_torch.torch_reader.load_torch_file(str(path))
    for name, tensor in tensors.items():
      np.testing.assert_array_equal(state[name], tensor.numpy(), err_msg=name)
      assert state[name].shape == tuple(tensor.shape)


def test_pre_0_3_tensors_load_and_stay_checked(tmp_path):
  """torch.FloatTensor() + BUILD tensors load, with the same layout checks;
  the class may not be called with a size (it would allocate)."""
  values = np.arange(12, dtype=np.float32)
  storage = FakeStorage("0", 12)
  state = collections.OrderedDict(
      w=OldTensor(storage, [3, 4], [4, 1]),
      t=OldTensor(storage, [2, 3], [1, 4], offset=1))
  path = write_legacy(tmp_path / "old.pth", {"features": state},
                      {"0": (12, values.tobytes())})
  loaded = import_torch.load_reference_checkpoint(path)["features"]
  np.testing.assert_array_equal(loaded["w"], values.reshape(3, 4))
  np.testing.assert_array_equal(loaded["t"],
                                values.reshape(3, 4).T[1:3, :3])
  over = write_legacy(tmp_path / "over.pth",
                      {"w": OldTensor(storage, [4, 4], [4, 1])},
                      {"0": (12, values.tobytes())})
  with pytest.raises(import_torch.CheckpointError, match="overruns"):
    import_torch.load_reference_checkpoint(over)
  sized = global_call("torch", "FloatTensor", "x")  # torch.FloatTensor('x')
  with pytest.raises(import_torch.UnsafeCheckpointError,
                     match="torch.FloatTensor with arguments"):
    import_torch.load_reference_checkpoint(torch_zip(tmp_path / "s.pth",
                                                     sized))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_files_name_the_file_and_echo_no_bytes(tmp_path, legacy):
  """Cut anywhere: a CheckpointError naming the file, saying it is truncated
  or corrupt, in printable ASCII without escaped bytes. (A cut zip must not
  be read as a legacy stream: for c.pth, whose first record name
  'c/data.pkl' has 10 characters, a newline in the header's length field,
  that reading's message would echo the header's raw bytes.)"""
  good = tmp_path / "c.pth"
  torch.manual_seed(0)
  state = {"netD": collections.OrderedDict(w=torch.randn(4, 3),
                                           b=torch.arange(5)), "epoch": 3}
  torch.save(state, good, _use_new_zipfile_serialization=not legacy)
  data = good.read_bytes()
  cut = tmp_path / "cut.pth"
  # Every cut in the headers, then ~100 spread over the file.
  for n in sorted(set(range(64)) | {len(data) - 1} |
                  set(range(0, len(data), max(1, len(data) // 97)))):
    cut.write_bytes(data[:n])
    with pytest.raises(import_torch.CheckpointError) as error:
      import_torch.load_reference_checkpoint(str(cut))
    message = str(error.value)
    assert message.startswith(f"{cut}: "), (n, message)
    assert "truncated or corrupt" in message, (n, message)
    assert all(" " <= c <= "~" for c in message), (n, message)
    assert "\\x" not in message, (n, message)


# --- The command line --------------------------------------------------------

TINY_GIN = """
Unsup3D.nf = 16
Unsup3D.zdim = 32
Unsup3D.light_view_nf = 8
Unsup3D.conf_zdim = 16
Unsup3D.lam_perc = 1.0
Unsup3D.vgg_weights = None
# Training configs also bind these; the importer skips them.
make_dataset.data_dir = 'unused'
train.batch_size = 2
"""


def test_cli_writes_what_evaluate_loads(reference, tmp_path):
  gin_file = tmp_path / "tiny.gin"
  gin_file.write_text(TINY_GIN)
  output_dir = tmp_path / "imported"
  result = subprocess.run(
      [sys.executable, "-m", "tf_unsup3d.tools.import_torch",
       f"--checkpoint={reference.path}", f"--gin_file={gin_file}",
       f"--output_dir={output_dir}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "epoch 7" in result.stdout
  assert os.path.isfile(output_dir / "checkpoints" / "ckpt-7.index")
  gin.clear_config()
  gin.parse_config_files_and_bindings([str(gin_file)], [], skip_unknown=True)
  try:
    for checkpoint in (output_dir, output_dir / "final.weights.h5"):
      model = checkpoints.load_model(str(checkpoint))
      diffs = network_outputs_differ(model, reference.nets, reference.images)
      print(f"CLI {checkpoint.name}: max |diff| {max(diffs.values()):.2e}")
      assert max(diffs.values()) <= 1e-4, diffs
  finally:
    gin.clear_config()


def test_print_measured_differences():
  """Runs last: the largest difference per quantity (see the docstring)."""
  for name, value in sorted(MEASURED.items()):
    print(f"{name:40s} {value:.2e}")


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
