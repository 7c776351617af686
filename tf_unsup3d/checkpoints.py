"""The configured model, built, and its checkpoints: find, check, load, save.

Every program that runs a trained model (evaluation, export, the demo, the
benchmarks) gets it from `load_model`, named by the --checkpoint flag of
`define_checkpoint_flag`; training restores and resumes with
`newest_intact_checkpoint` and `restore_model` and writes its last weights
with `save_final_weights`.
"""

import glob
import os
import re

from absl import flags
from absl import logging
import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tf_unsup3d import atomic_files
from tf_unsup3d import model as model_lib

# Flags defined here (`define_checkpoint_flag`) belong to the program that
# defines them, so that its --helpshort lists them.
flags.disclaim_key_flags()

_WEIGHTS_SUFFIX = ".weights.h5"


def build_model(mixed_precision=False, **overrides):
  """The gin-configured `Unsup3D` with its variables created.

  Args:
    mixed_precision: create the networks in Keras' `mixed_bfloat16` policy
      (bfloat16 compute, float32 variables), as `train.mixed_precision`
      does; otherwise in the global policy.
    **overrides: constructor arguments that take precedence over the gin
      bindings (e.g. `vgg_weights=None`).

  Returns:
    An `Unsup3D` built for `[None, S, S, 3]` inputs, S its `image_size`.
  """
  # Layers take the global dtype policy when they are created.
  policy = keras.mixed_precision.global_policy()
  if mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = model_lib.Unsup3D(**overrides)
    model.build((None, model.image_size, model.image_size, 3))
  finally:
    keras.mixed_precision.set_global_policy(policy)
  return model


def save_final_weights(model, path):
  """Writes `model`'s weights to `path` (a `.weights.h5`) atomically.

  A crash never leaves a half-written `path` for `load_model` to read.
  """
  if not path.endswith(_WEIGHTS_SUFFIX):
    raise ValueError(f"{path}: Keras saves weights only to a "
                     f"'{_WEIGHTS_SUFFIX}' file.")
  with atomic_files.replacing(path, suffix=_WEIGHTS_SUFFIX) as tmp:
    model.save_weights(tmp)


class CheckpointError(ValueError):
  """A checkpoint that is unreadable or does not fit the configured model."""


# The gin settings that shape each network's variables: where to look when a
# checkpoint's variables do not fit the configured model.
_NET_SETTINGS = {
    "net_depth": "Unsup3D.nf, Unsup3D.zdim",
    "net_albedo": "Unsup3D.nf, Unsup3D.zdim",
    "net_light": "Unsup3D.light_view_nf",
    "net_view": "Unsup3D.light_view_nf",
    "net_conf": "Unsup3D.use_conf_map, Unsup3D.nf, Unsup3D.conf_zdim",
}
_USE_TRAINING_CONFIG = ("Load it with the gin files and --gin_param bindings it "
                     "was trained with.")


def _net_of(variable_path):
  """The `Unsup3D` network ('net_depth', ...) a variable path belongs to."""
  return next((p for p in variable_path.split("/") if p in _NET_SETTINGS),
              "other")


def _mismatch_hint(nets):
  settings = sorted({_NET_SETTINGS.get(n, "the Unsup3D settings")
                     for n in nets})
  return (f"Probably a setting differs from training: {'; '.join(settings)}. "
          + _USE_TRAINING_CONFIG)


def checkpoint_step(prefix):
  """The step number N of a `.../ckpt-N` prefix (-1 if it has none)."""
  match = re.search(r"-(\d+)$", prefix)
  return int(match.group(1)) if match else -1


def checkpoint_prefixes(directory):
  """Checkpoint prefixes in `directory`, newest (highest step) first.

  Both those the `checkpoint` state file lists and those with an `.index`
  file on disk: a damaged state file hides none.
  """
  state = tf.train.get_checkpoint_state(directory)
  listed = list(state.all_model_checkpoint_paths) if state else []
  on_disk = [p[:-len(".index")]
             for p in glob.glob(os.path.join(glob.escape(directory),
                                             "*.index"))]
  prefixes = {os.path.normpath(os.path.join(directory, p))
              for p in listed + on_disk}
  return sorted(prefixes, key=lambda p: (checkpoint_step(p), p), reverse=True)


def checkpoint_problem(prefix):
  """Why the checkpoint at `prefix` cannot be read, or None if it is intact.

  Reads every tensor, so truncation and bit rot (the bundle's checksums)
  show up here rather than halfway through a restore.
  """
  index = prefix + ".index"
  if not os.path.isfile(index):
    return f"{index} is missing"
  data = sorted(glob.glob(glob.escape(prefix) + ".data-*"))
  if not data:
    return f"its data file {prefix}.data-* is missing"
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    return f"{index} is unreadable ({e})"
  try:
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)
  except (tf.errors.OpError, IndexError, ValueError) as e:
    return (f"data file {', '.join(data)} is truncated or corrupt "
            f"({type(e).__name__}: {e})")
  return None


def newest_intact_checkpoint(directory):
  """(newest readable prefix or None, [(unreadable newer prefix, reason)])."""
  problems = []
  for prefix in checkpoint_prefixes(directory):
    problem = checkpoint_problem(prefix)
    if problem is None:
      return prefix, problems
    problems.append((prefix, problem))
  return None, problems


def _subtree(view, node_id):
  """Node ids reachable from `node_id` in a `CheckpointView`, itself included."""
  seen, stack = set(), [node_id]
  while stack:
    node = stack.pop()
    if node not in seen:
      seen.add(node)
      stack += view.children(node).values()
  return seen


def _compare_with_model(path, model, required):
  """How the checkpoint's model differs from `model`, before reading it.

  Returns:
    (missing: `required` variables with no value in the checkpoint,
     reshaped: [(variable, checkpoint shape)] whose shapes differ,
     unused: names of top-level parts of the checkpoint's model that
     `model` lacks).
  """
  view = tf.train.CheckpointView(path)
  matched = view.match(tf.train.Checkpoint(model=model))
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
      reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  wanted = {id(v) for v in required}
  found, reshaped = set(), []
  for node_id, obj in matched.items():
    if id(obj) in wanted:
      found.add(id(obj))
      shape = tuple(shapes[graph.nodes[node_id].attributes[0].checkpoint_key])
      if shape != tuple(obj.shape):
        reshaped.append((obj, shape))
  missing = [v for v in required if id(v) not in found]
  root = view.children(0)
  parts = view.children(root["model"]) if "model" in root else {}
  unused = [name for name, node_id in parts.items()
            if any(graph.nodes[n].attributes and n not in matched
                   for n in _subtree(view, node_id))]
  return missing, reshaped, sorted(unused)


def restore_model(checkpoint, path, model):
  """Reads `path` into `checkpoint`, requiring every variable of `model`.

  Args:
    checkpoint: a `tf.train.Checkpoint` holding `model` as `model` (and
      possibly an optimizer, counters).
    path: a checkpoint prefix.
    model: the built `Unsup3D`. Its frozen VGG16 is not required (it comes
      from its own weights file and is not trained).

  Returns:
    The load status: what else must match (optimizer slots, counters) is the
    caller's to assert.

  Raises:
    CheckpointError: naming the variables the checkpoint lacks or holds in
      another shape, and the gin settings that shape them. Nothing is read
      then.
  """
  frozen = {id(v) for v in (model.vgg.variables if model.vgg else [])}
  required = [v for v in model.variables if id(v) not in frozen]
  missing, reshaped, unused = _compare_with_model(path, model, required)
  problems, nets = [], set()
  if missing:
    nets.update(_net_of(v.path) for v in missing)
    count = lambda vs, n: sum(_net_of(v.path) == n for v in vs)
    whole = sorted(n for n in nets
                   if n != "other" and count(missing, n) == count(required, n))
    problems.append(
        f"it lacks {len(missing)} of the configured model's {len(required)} "
        f"variables, e.g. {', '.join(v.path for v in missing[:3])}" +
        (f" (it has no {' and no '.join(whole)} at all)" if whole else ""))
  if reshaped:
    nets.update(_net_of(v.path) for v, _ in reshaped)
    problems.append(
        f"{len(reshaped)} variables have other shapes, e.g. " + ", ".join(
            f"{v.path} {shape} in the checkpoint, {tuple(v.shape)} configured"
            for v, shape in reshaped[:3]))
  if problems:
    raise CheckpointError(f"{path} does not fit the configured model: "
                          f"{'; '.join(problems)}. {_mismatch_hint(nets)}")
  if unused:
    logging.warning(
        "%s holds weights of model parts the configured model does not "
        "have (%s): they are ignored. %s", path, ", ".join(unused),
        _mismatch_hint(unused))
  return checkpoint.read(path)


def _load_weights_file(model, path):
  """`model.load_weights(path)` with an error that says what differs."""
  try:
    model.load_weights(path)
  except OSError as e:  # h5py: truncated, or not an HDF5 file
    raise CheckpointError(f"{path} is unreadable: {e}") from None
  except ValueError as e:
    # Keras names the layers it could not load; map them to our networks.
    text = str(e)
    nets = [name for name in _NET_SETTINGS
            if getattr(model, name, None) is not None and any(
                f"name={layer.name}," in text
                for layer in getattr(model, name)._flatten_layers())]  # pylint: disable=protected-access
    count = re.search(r"A total of (\d+) objects could not be loaded", text)
    what = (f"Keras could not load {count.group(1)} of its layers" if count
            else f"Keras: {text.strip()}")
    where = f" (in {', '.join(nets)})" if nets else ""
    raise CheckpointError(
        f"{path} does not fit the configured model: {what}{where}. "
        f"{_mismatch_hint(nets or ['other'])}") from None


def load_model(checkpoint, mixed_precision=False):
  """Builds the gin-configured model and loads `checkpoint` into it.

  Args:
    checkpoint: a model_dir of `tf_unsup3d.train` (its newest intact
      checkpoint is used: newer unreadable ones are skipped with a warning),
      a `ckpt-N` prefix or a `.weights.h5` file.
    mixed_precision: build the networks in mixed bfloat16 (`build_model`);
      the float32 variables load either way.

  Raises:
    FileNotFoundError: nothing to load there.
    CheckpointError: the checkpoint is unreadable, or it does not hold every
      variable of the configured model (a config mismatch, e.g.
      `Unsup3D.use_conf_map` or `Unsup3D.nf`), so a random model is never
      returned.
  """
  model = build_model(mixed_precision)
  if checkpoint.endswith(_WEIGHTS_SUFFIX):
    _load_weights_file(model, checkpoint)
    logging.info("Loaded %s", checkpoint)
    return model
  path = checkpoint
  if os.path.isdir(checkpoint):
    folder = os.path.join(checkpoint, "checkpoints")
    path, problems = newest_intact_checkpoint(folder)
    for prefix, problem in problems:
      logging.warning("Skipping checkpoint %s: %s.", prefix, problem)
    if path is None and problems:
      raise CheckpointError(
          f"No readable checkpoint in {folder}: " + "; ".join(
              f"{p}: {r}" for p, r in problems))
    if path is None:
      raise FileNotFoundError(
          f"No checkpoint in {folder}; pass --checkpoint=a model_dir of "
          "tf_unsup3d.train, a ckpt-N prefix or a .weights.h5.")
    if problems:
      logging.warning("Loading %s, the newest intact checkpoint.", path)
  else:
    if not os.path.isfile(path + ".index"):
      raise FileNotFoundError(
          f"No checkpoint {path} ({path}.index does not exist); pass a "
          "model_dir, a ckpt-N prefix or a .weights.h5.")
    problem = checkpoint_problem(path)
    if problem:
      intact, _ = newest_intact_checkpoint(os.path.dirname(path) or ".")
      fix = (f" The newest intact one there is {intact}: pass "
             f"--checkpoint={intact}." if intact else "")
      raise CheckpointError(f"Checkpoint {path} is unreadable: {problem}."
                            + fix)
  # Optimizer slots and counters of a training checkpoint stay unread.
  restore_model(tf.train.Checkpoint(model=model), path, model).expect_partial()
  logging.info("Loaded %s", path)
  return model


def define_checkpoint_flag(without=None):
  """Defines --checkpoint, the weights a program loads with `load_model`.

  Args:
    without: what the program uses when the flag is not given, for the
      help text; None for programs that require it (they check it).

  Returns:
    The flag's `FlagHolder`.
  """
  help_text = ("A model_dir of tf_unsup3d.train, a ckpt-N prefix or a "
               ".weights.h5 file (with the --gin_file the model was "
               "trained with).")
  if without:
    help_text += f" Optional: without it, {without}."
  return flags.DEFINE_string("checkpoint", None, help_text)
