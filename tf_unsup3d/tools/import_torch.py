r"""Imports checkpoints of the reference PyTorch implementation of the paper.

    python -m tf_unsup3d.tools.import_torch --checkpoint=checkpoint030.pth \
        --gin_file=gin_configs/celeba.gin --output_dir=runs/celeba_reference

The reference trainer saves a dict holding the state dicts `netD`, `netA`,
`netL`, `netV` and, with confidence maps, `netC`, next to its optimizer
states, a pickled `unsup3d.meters.MetricsTrace` and `epoch`; only the
networks are imported. Every tensor is mapped onto the gin-configured
`Unsup3D` by layer order and checked by name and shape, and the result is
written like a `tf_unsup3d.train` model_dir: `output_dir/checkpoints/ckpt-N`
(N = the reference epoch; `tf_unsup3d.evaluate --checkpoint=output_dir`)
and `output_dir/final.weights.h5`.

Reading runs no code from the file and needs neither PyTorch nor the
reference's code: both formats of `torch.save` (the zip archive of PyTorch
>= 1.6 and the legacy stream of the reference's PyTorch 1.2) are parsed with
a restricted unpickler into NumPy arrays (`load_reference_checkpoint`).
"""

import collections
import io
import os
import pickle
import re
import zipfile

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import configurable
from tf_unsup3d import model as model_lib
from tf_unsup3d import networks


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the configured model."""


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A checkpoint whose pickle calls something the importer does not allow."""


# --- Restricted unpickling ---------------------------------------------------
#
# pickle builds objects by calling globals the file names (REDUCE, and
# INST/OBJ with arguments) or by creating instances of classes (NEWOBJ) and
# filling them (BUILD). `find_class` never imports anything: allow-listed
# globals map to the functions below, storage types to dtypes, and every
# other name to an inert stand-in class. Calling a stand-in is refused, so an
# unknown class still unpickles (NEWOBJ + BUILD: the reference's
# `metrics_trace`) while `os.system(...)` or `builtins.eval(...)` cannot run.
# The objects handed to the pickle refuse BUILD, so it cannot modify them.

_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "UntypedStorage": "u1",
}


def _refuse_build(name):
  raise UnsafeCheckpointError(
      f"The checkpoint's pickle tries to modify {name} (BUILD); refused.")


class _Allowed:
  """An allow-listed global: callable, but the pickle cannot modify it."""

  __slots__ = ("name", "function")

  def __init__(self, name, function):
    self.name = name
    self.function = function

  def __call__(self, *args, **kwargs):
    return self.function(*args, **kwargs)

  def __setstate__(self, state):
    _refuse_build(self.name)


class _StorageType:
  """`torch.<Type>Storage` named in a persistent id: a dtype, not callable."""

  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name = name
    self.dtype = dtype

  def __setstate__(self, state):
    _refuse_build(f"torch.{self.name}")


class _Storage:
  """A flat storage: `array` `[numel]` of the storage's dtype."""

  __slots__ = ("array",)

  def __init__(self, array):
    self.array = array

  def __setstate__(self, state):
    _refuse_build("a tensor storage")


class ForeignObject:
  """Inert stand-in for an object of a class the importer does not know.

  pickle's NEWOBJ creates it (`args`, `kwargs`) and BUILD fills it (`state`);
  `global_name` names the original class (e.g. the reference's
  `unsup3d.meters.MetricsTrace`). It has none of the original's behaviour.
  Calling the class, as pickle's REDUCE does, is refused.
  """

  global_name = "?"

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.__dict__.update(args=args, kwargs=kwargs, state=None)
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs
    raise UnsafeCheckpointError(_refusal(self.global_name))

  def __setstate__(self, state):
    self.__dict__["state"] = state

  def __repr__(self):
    return f"<stand-in for {self.global_name}>"


def _refusal(name):
  allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _CALLABLES))
  return (f"Refusing to call {name} while loading a checkpoint: loading may "
          f"only call {allowed}. This file is not a plain reference "
          "checkpoint and may be malicious; nothing was executed.")


def _is_count(x):
  """A non-negative int (not a bool): sizes, strides, offsets."""
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args,
                    **unused_kwargs):
  """torch._utils._rebuild_tensor(_v2) on NumPy: a copied strided view."""
  del unused_args, unused_kwargs
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(
        f"Tensor rebuild got {type(storage).__name__}, not a storage.")
  counts = lambda xs: isinstance(xs, (tuple, list)) and all(map(_is_count, xs))
  if (not counts(size) or not counts(stride) or len(size) != len(stride) or
      not _is_count(storage_offset)):
    raise pickle.UnpicklingError(
        f"Invalid tensor layout: offset {storage_offset!r}, size {size!r}, "
        f"stride {stride!r}.")
  array = storage.array
  if 0 in size:
    return np.zeros(size, array.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= array.size:
    raise pickle.UnpicklingError(
        f"Tensor of size {tuple(size)}, stride {tuple(stride)} at offset "
        f"{storage_offset} overruns its storage of {array.size} elements.")
  view = np.lib.stride_tricks.as_strided(
      array[storage_offset:], shape=tuple(size),
      strides=tuple(s * array.itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data, *unused_args):
  """torch._utils._rebuild_parameter(_with_state): the tensor itself."""
  del unused_args
  if not isinstance(data, np.ndarray):
    raise pickle.UnpicklingError("A parameter must wrap a tensor.")
  return data


def _encode_latin1(text, encoding):
  """_codecs.encode as protocol-2 pickles use it for bytes objects."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafeCheckpointError(
        f"Refusing _codecs.encode with encoding {encoding!r}.")
  return text.encode("latin-1")


_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _encode_latin1,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler of torch.save's pickles that imports and executes nothing.

  `load_storage(dtype, key, numel)` returns the `[numel]` array of a storage.
  """

  def __init__(self, file, load_storage=None):
    super().__init__(file)
    self._load_storage = load_storage
    self._storages = {}
    self._stand_ins = {}

  def find_class(self, module, name):
    if (module, name) in _CALLABLES:
      return _Allowed(f"{module}.{name}", _CALLABLES[(module, name)])
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    full_name = f"{module}.{name}"
    if full_name not in self._stand_ins:
      self._stand_ins[full_name] = type(
          "ForeignObject", (ForeignObject,), {"global_name": full_name})
    return self._stand_ins[full_name]

  def persistent_load(self, pid):
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or
        pid[0] not in ("storage", b"storage") or self._load_storage is None):
      raise pickle.UnpicklingError(
          f"Unsupported persistent id {str(pid)[:80]}: not a tensor storage.")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    view = pid[5] if len(pid) == 6 else None
    if (not isinstance(storage_type, _StorageType) or
        not isinstance(key, str) or not _is_count(numel)):
      raise pickle.UnpicklingError(f"Invalid storage id {str(pid)[:80]}.")
    if key not in self._storages:
      self._storages[key] = _Storage(
          self._load_storage(storage_type.dtype, key, numel))
    if view is None:
      return self._storages[key]
    # The legacy format's storage views: (view_key, offset, size) elements.
    if (not isinstance(view, tuple) or len(view) != 3 or
        not isinstance(view[0], str) or not _is_count(view[1]) or
        not _is_count(view[2])):
      raise pickle.UnpicklingError(f"Invalid storage view {str(view)[:80]}.")
    view_key, offset, size = view
    if view_key not in self._storages:
      root = self._storages[key].array
      if offset + size > root.size:
        raise pickle.UnpicklingError(f"Invalid storage view {view!r}.")
      self._storages[view_key] = _Storage(root[offset:offset + size])
    return self._storages[view_key]


def _from_bytes(data, dtype, little_endian=True):
  """Raw storage bytes -> a 1-D native-endian array (bfloat16 as float32)."""
  order = "<" if little_endian else ">"
  if dtype == "bfloat16":
    bits = np.frombuffer(data, order + "u2").astype(np.uint32) << 16
    return bits.view(np.float32)
  return np.frombuffer(data, np.dtype(dtype).newbyteorder(order)).astype(
      np.dtype(dtype).newbyteorder("="))


def _itemsize(dtype):
  return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _load_zip(archive):
  """torch.save's zip format (PyTorch >= 1.6): `<root>/data.pkl` + data/."""
  names = archive.namelist()
  pickles = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
  if len(pickles) != 1:
    if any(n.endswith("/constants.pkl") for n in names):
      raise CheckpointError("This is a TorchScript archive (torch.jit.save), "
                            "not a torch.save checkpoint.")
    raise CheckpointError("No <root>/data.pkl: not a torch.save zip archive.")
  root = pickles[0][:-len("data.pkl")]
  little = True
  if root + "byteorder" in names:
    little = archive.read(root + "byteorder").decode().strip() == "little"

  def load_storage(dtype, key, numel):
    if not re.fullmatch(r"[A-Za-z0-9_.]+", key):
      raise pickle.UnpicklingError(f"Invalid storage key {key!r}.")
    try:
      data = archive.read(f"{root}data/{key}")
    except KeyError:
      raise CheckpointError(f"Storage {key} is missing.") from None
    if len(data) < numel * _itemsize(dtype):
      raise CheckpointError(f"Storage {key} holds {len(data)} bytes, fewer "
                            f"than {numel} elements of {dtype}.")
    return _from_bytes(data[:numel * _itemsize(dtype)], dtype, little)

  return _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])),
                              load_storage).load()


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


def _load_legacy(f):
  """torch.save's legacy stream (PyTorch < 1.6, the reference's 1.2).

  Pickles of the magic number, the protocol and the system info, the object
  pickle, the list of storage keys, then each storage as an int64 element
  count and raw data. The object pickle needs the storages, which follow
  it: a first pass records their dtypes, a second one builds the tensors.
  """
  if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
    raise CheckpointError("Not a torch.save file (bad magic number).")
  if _RestrictedUnpickler(f).load() != _LEGACY_PROTOCOL:
    raise CheckpointError("Unsupported legacy torch.save protocol version.")
  sys_info = _RestrictedUnpickler(f).load()
  little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
  start = f.tell()
  dtypes = {}

  def record(dtype, key, numel):
    dtypes[key] = dtype
    return np.zeros(numel, "f4" if dtype == "bfloat16" else dtype)

  _RestrictedUnpickler(f, record).load()
  keys = _RestrictedUnpickler(f).load()
  if not isinstance(keys, list) or set(keys) != set(dtypes):
    raise CheckpointError("Legacy checkpoint: storage keys do not match.")
  data = {}
  for key in keys:
    numel = int(np.frombuffer(f.read(8), "<i8" if little else ">i8")[0])
    raw = f.read(numel * _itemsize(dtypes[key]))
    if numel < 0 or len(raw) != numel * _itemsize(dtypes[key]):
      raise CheckpointError(f"Legacy checkpoint: storage {key} is truncated.")
    data[key] = _from_bytes(raw, dtypes[key], little)
  f.seek(start)

  def load_storage(dtype, key, numel):
    del dtype
    if data[key].size < numel:
      raise CheckpointError(f"Legacy checkpoint: storage {key} is too short.")
    return data[key]

  return _RestrictedUnpickler(f, load_storage).load()


def load_reference_checkpoint(path):
  """Reads a reference checkpoint without executing code from it.

  Args:
    path: a `.pth` file written by `torch.save` (zip or legacy format).

  Returns:
    The saved dict: state dicts (tensor name -> `np.ndarray`) under `netD`,
    `netA`, ...; optimizer states likewise; objects of unknown classes
    (the reference's `metrics_trace`) as inert `ForeignObject`s.

  Raises:
    UnsafeCheckpointError: the pickle calls anything but tensor rebuilding,
      OrderedDict and plain containers (e.g. `os.system`); names the global.
    CheckpointError: the file is no torch.save checkpoint or is corrupt.
  """
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        state = _load_zip(archive)
    else:
      with open(path, "rb") as f:
        state = _load_legacy(f)
  except UnsafeCheckpointError as e:
    raise UnsafeCheckpointError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, IndexError,
          TypeError, ValueError) as e:
    if isinstance(e, CheckpointError):
      raise CheckpointError(f"{path}: {e}") from None
    raise CheckpointError(f"{path}: not a readable torch checkpoint "
                          f"({type(e).__name__}: {e})") from e
  if not isinstance(state, dict):
    raise CheckpointError(f"{path} holds a {type(state).__name__}, not the "
                          "reference trainer's dict of state dicts.")
  return state


# --- Layout mapping ----------------------------------------------------------

# Reference network name -> `Unsup3D` attribute.
NETWORKS = {"netD": "net_depth", "netA": "net_albedo", "netL": "net_light",
            "netV": "net_view", "netC": "net_conf"}

# Keras layers that are part of a torch convolution (its padding argument),
# not a torch module of their own.
_PADDING_LAYERS = (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)

# Conv2D kernels [kh, kw, in, out] come from Conv2d weights [out, in, kh, kw];
# Conv2DTranspose kernels [kh, kw, out, in] from ConvTranspose2d weights
# [in, out, kh, kw]. Both are the same axis permutation and, as both
# frameworks' transposed convolution is the adjoint of the same
# cross-correlation, need no spatial flip (tests/test_import_torch.py).
_TO_KERAS = (2, 3, 1, 0)
_TO_TORCH = (3, 2, 0, 1)


def _sequentials(net):
  """(reference nn.Sequential name, Keras Sequential) pairs of a network."""
  if isinstance(net, networks.ConfNet):
    return [("network", net.trunk), ("out_net1", net.full_head),
            ("out_net2", net.quarter_head)]
  return [("network", net.body)]


def reference_layout(net):
  """Reference tensor name -> (Keras variable, layer) for one network.

  Walks the Keras layers in order, counting the torch module index the
  reference's nn.Sequential gives each: every layer is one module except
  the padding and cropping layers that stand for a convolution's padding.

  Args:
    net: a built `Encoder`, `EDDeconv` or `ConfNet`.

  Returns:
    Ordered dict, e.g. 'network.0.weight' -> (conv kernel, Conv2D layer).
  """
  layout = collections.OrderedDict()
  for prefix, sequential in _sequentials(net):
    index = 0
    for layer in sequential.layers:
      if isinstance(layer, _PADDING_LAYERS):
        continue
      name = f"{prefix}.{index}"
      if isinstance(layer, (keras.layers.Conv2D,
                            keras.layers.Conv2DTranspose)):
        mapped = {f"{name}.weight": layer.kernel}
      elif isinstance(layer, keras.layers.GroupNormalization):
        mapped = {f"{name}.weight": layer.gamma, f"{name}.bias": layer.beta}
      else:
        mapped = {}
      if len(mapped) != len(layer.weights):
        raise CheckpointError(f"No reference layout for layer {layer.name} "
                              f"({type(layer).__name__}) of {net.name}.")
      for key, variable in mapped.items():
        layout[key] = (variable, layer)
      index += 1
  return layout


_MAX_PROBLEMS = 12


def _torch_shape(variable):
  shape = tuple(variable.shape)
  return tuple(shape[i] for i in _TO_TORCH) if len(shape) == 4 else shape


def _match_network(ref_name, net, state_dict):
  """[(variable, value)] for one network; raises naming every bad tensor."""
  if not isinstance(state_dict, dict):
    raise CheckpointError(f"{ref_name} is a {type(state_dict).__name__}, "
                          "not a state dict.")
  layout = reference_layout(net)
  problems, assignments = [], []
  for key, (variable, layer) in layout.items():
    where = (f"layer {layer.name} ({type(layer).__name__}, Keras "
             f"{variable.name} {tuple(variable.shape)}) of {net.name}")
    if key not in state_dict:
      problems.append(f"{ref_name}: {key} is missing, expected shape "
                      f"{_torch_shape(variable)} for {where}")
      continue
    value = np.asarray(state_dict[key])
    if value.shape != _torch_shape(variable):
      problems.append(f"{ref_name}: {key} has shape {value.shape}, expected "
                      f"{_torch_shape(variable)} for {where}")
    elif not np.issubdtype(value.dtype, np.floating):
      problems.append(f"{ref_name}: {key} has dtype {value.dtype}, expected "
                      f"floating point for {where}")
    else:
      if value.ndim == 4:
        value = value.transpose(_TO_KERAS)
      assignments.append((variable, value.astype(variable.dtype)))
  for key in state_dict:
    if key not in layout:
      shape = np.shape(state_dict[key])
      problems.append(f"{ref_name}: unexpected tensor {key} {shape}: "
                      f"{net.name} has no layer for it")
  if problems:
    shown = problems[:_MAX_PROBLEMS] + (
        [f"... and {len(problems) - _MAX_PROBLEMS} more"]
        if len(problems) > _MAX_PROBLEMS else [])
    raise CheckpointError(
        "The checkpoint does not fit the configured model (are the gin "
        "config's Unsup3D.nf, zdim, light_view_nf, conf_zdim and "
        "use_conf_map those the checkpoint was trained with?):\n  " +
        "\n  ".join(shown))
  return assignments


def convert_state_dicts(model, state):
  """Copies reference state dicts into an `Unsup3D`: all tensors or none.

  Args:
    model: an `Unsup3D` (built here if it is not yet).
    state: reference network name (`netD`, `netA`, `netL`, `netV`, `netC`)
      -> state dict (tensor name -> array, torch layout). A whole reference
      checkpoint may be passed: entries not named `net*` (optimizer states,
      `metrics_trace`, `epoch`) are ignored.

  Raises:
    CheckpointError: a network or tensor is missing, extra or mis-shaped;
      the message names each one. Nothing is assigned then.
  """
  if not model.built:
    model.build((None, model.image_size, model.image_size, 3))
  nets = {k: v for k, v in state.items()
          if isinstance(k, str) and k.startswith("net")}
  unknown = sorted(set(nets) - set(NETWORKS))
  if unknown:
    raise CheckpointError(f"Unknown networks {unknown} in the checkpoint; "
                          f"the reference has {sorted(NETWORKS)}.")
  assignments = []
  for ref_name, attribute in NETWORKS.items():
    net = getattr(model, attribute)
    if net is None and ref_name in nets:
      raise CheckpointError(
          f"The checkpoint has {ref_name} (confidence maps) but the model has "
          "no confidence network: set Unsup3D.use_conf_map = True.")
    if net is not None and ref_name not in nets:
      raise CheckpointError(
          f"The checkpoint has no {ref_name} for {attribute}"
          + (" (trained without confidence maps? set Unsup3D.use_conf_map "
             "= False)." if ref_name == "netC" else "."))
    if net is not None:
      assignments += _match_network(ref_name, net, nets[ref_name])
  for variable, value in assignments:
    variable.assign(value)


# --- Command line ------------------------------------------------------------


def import_checkpoint(checkpoint, output_dir):
  """Converts a reference checkpoint into the gin-configured `Unsup3D`.

  Writes `output_dir/checkpoints/ckpt-<epoch>` (a `tf.train.Checkpoint` with
  the model, as `tf_unsup3d.train` saves it) and `output_dir/final.weights.h5`.

  Returns:
    (model, dict of the written paths and the reference `epoch`).
  """
  state = load_reference_checkpoint(checkpoint)
  model = model_lib.Unsup3D()
  convert_state_dicts(model, state)
  epoch = state.get("epoch")
  number = epoch if _is_count(epoch) else 0
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model), os.path.join(output_dir, "checkpoints"),
      max_to_keep=None)
  prefix = manager.save(checkpoint_number=number)
  weights = os.path.join(output_dir, "final.weights.h5")
  tmp = os.path.join(output_dir, "final.tmp.weights.h5")
  model.save_weights(tmp)
  os.replace(tmp, weights)
  return model, {"checkpoint": prefix, "weights": weights, "epoch": epoch}


def define_flags():
  """Command-line flags of the import CLI."""
  configurable.gin_flags()
  flags.DEFINE_string("checkpoint", None, "Reference checkpoint (.pth) saved "
                      "by the PyTorch implementation.")
  flags.DEFINE_string("output_dir", None, "Where to write checkpoints/ and "
                      "final.weights.h5.")


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.checkpoint or not args.output_dir:
    raise app.UsageError("--checkpoint and --output_dir are required.")
  if not args.gin_file:
    raise app.UsageError("Give the config the checkpoint was trained with: "
                         "--gin_file=gin_configs/<name>.gin")
  # Training configs also bind the data pipeline and the training loop.
  configurable.parse_gin_flags(
      skip_unknown=("train", "generate_synthetic", "make_dataset"))
  try:
    model, written = import_checkpoint(args.checkpoint, args.output_dir)
  except (CheckpointError, UnsafeCheckpointError) as e:
    raise SystemExit(f"import_torch: {e}") from None
  print(f"Imported {args.checkpoint} (epoch {written['epoch']}): "
        f"{len(model.trainable_variables)} variables.")
  print(f"  checkpoint: {written['checkpoint']}")
  print(f"  weights:    {written['weights']}")
  print(f"Evaluate with: python -m tf_unsup3d.evaluate "
        f"--gin_file={args.gin_file[0]} --checkpoint={args.output_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
