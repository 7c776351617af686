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
a restricted unpickler into NumPy arrays (`load_reference_checkpoint`, see
`tf_unsup3d.tools.torch_reader`). Every size the file claims is checked
against the bytes really there and against limits (--max_tensor_elements,
--max_total_bytes) before anything is allocated.
"""

import collections
import os

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d import networks
from tf_unsup3d.tools import torch_reader


# The reader is its own module (networks.py uses it for torchvision's VGG16
# without importing the model); its names stay importable from here.
CheckpointError = torch_reader.CheckpointError
CheckpointLimitError = torch_reader.CheckpointLimitError
UnsafeCheckpointError = torch_reader.UnsafeCheckpointError
ForeignObject = torch_reader.ForeignObject


def load_reference_checkpoint(
    path, max_tensor_elements=torch_reader.DEFAULT_MAX_TENSOR_ELEMENTS,
    max_total_bytes=torch_reader.DEFAULT_MAX_TOTAL_BYTES):
  """Reads a reference checkpoint without executing code from it.

  Args:
    path: a `.pth` file written by `torch.save` (zip or legacy format).
    max_tensor_elements: most elements one tensor or storage may claim
      (default 2**28).
    max_total_bytes: most bytes the load may allocate (default 2 GiB).

  Returns:
    The saved dict: state dicts (tensor name -> `np.ndarray`) under `netD`,
    `netA`, ...; optimizer states likewise; objects of unknown classes
    (the reference's `metrics_trace`) as inert `ForeignObject`s.

  Raises:
    UnsafeCheckpointError: the pickle calls anything but tensor rebuilding,
      OrderedDict and plain containers (e.g. `os.system`); names the global.
    CheckpointLimitError: a tensor or storage claims more than the limits.
    CheckpointError: the file is no torch.save checkpoint, or is truncated
      or corrupt.
  """
  state = torch_reader.load_torch_file(
      path, max_tensor_elements=max_tensor_elements,
      max_total_bytes=max_total_bytes)
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


def import_checkpoint(checkpoint, output_dir, **limits):
  """Converts a reference checkpoint into the gin-configured `Unsup3D`.

  Writes `output_dir/checkpoints/ckpt-<epoch>` (a `tf.train.Checkpoint` with
  the model, as `tf_unsup3d.train` saves it) and `output_dir/final.weights.h5`.
  `limits` (max_tensor_elements, max_total_bytes) go to
  `load_reference_checkpoint`.

  Returns:
    (model, dict of the written paths and the reference `epoch`).
  """
  state = load_reference_checkpoint(checkpoint, **limits)
  model = checkpoints.build_model()
  convert_state_dicts(model, state)
  epoch = state.get("epoch")
  number = (epoch if isinstance(epoch, int) and not isinstance(epoch, bool)
            and epoch >= 0 else 0)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model), os.path.join(output_dir, "checkpoints"),
      max_to_keep=None)
  prefix = manager.save(checkpoint_number=number)
  weights = os.path.join(output_dir, "final.weights.h5")
  checkpoints.save_final_weights(model, weights)
  return model, {"checkpoint": prefix, "weights": weights, "epoch": epoch}


def define_flags():
  """Command-line flags of the import CLI."""
  configurable.gin_flags()
  flags.DEFINE_string("checkpoint", None, "Reference checkpoint (.pth) saved "
                      "by the PyTorch implementation.")
  flags.DEFINE_string("output_dir", None, "Where to write checkpoints/ and "
                      "final.weights.h5.")
  flags.DEFINE_integer(
      "max_tensor_elements", torch_reader.DEFAULT_MAX_TENSOR_ELEMENTS,
      "Refuse checkpoints with a tensor or storage of more elements.",
      lower_bound=0)
  flags.DEFINE_integer(
      "max_total_bytes", torch_reader.DEFAULT_MAX_TOTAL_BYTES,
      "Refuse checkpoints needing more bytes of tensor data in memory.",
      lower_bound=0)


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.checkpoint or not args.output_dir:
    raise app.UsageError("--checkpoint and --output_dir are required.")
  if not args.gin_file:
    raise app.UsageError("Give the config the checkpoint was trained with: "
                         "--gin_file=gin_configs/<name>.gin")
  configurable.parse_gin_flags(skip_unknown=configurable.TRAINING_PIPELINE)
  try:
    model, written = import_checkpoint(
        args.checkpoint, args.output_dir,
        max_tensor_elements=args.max_tensor_elements,
        max_total_bytes=args.max_total_bytes)
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
