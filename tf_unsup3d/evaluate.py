r"""Depth evaluation against ground truth, with the paper's two baselines.

    python -m tf_unsup3d.evaluate --gin_file=gin_configs/synthetic.gin \
        --checkpoint=runs/synthetic --split=test [--output_dir=DIR]

Scores every image of a split with ground-truth depth by SIDE and MAD
(DESIGN section 7; MAD both as the exact angle and as the reference's acos,
the convention of the paper's numbers) for the model and for two baselines measured on the same
images and the same pixels: a constant (null) depth map and the per-pixel
average ground-truth depth of the split. Writes per-image scores
(`scores_<split>.csv`) and prints mean and standard deviation of each.
"""

import csv
import glob
import os
import re

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tf_unsup3d import configurable
from tf_unsup3d import metrics
from tf_unsup3d import model as model_lib
from tf_unsup3d.data import datasets

METHODS = ("model", "null_depth", "average_gt_depth")
# SIDE; MAD as the exact angle; MAD as the reference computes it (the
# convention of the paper's Table 2, metrics.mean_angle_deviation_acos).
METRICS = ("side", "mad", "mad_acos")


def score_batch(renderer, depth_gt, recon_depth, reference_depth):
  """SIDE and both MADs per image for the model and the two baselines.

  Args:
    renderer: the model's `Renderer` (camera for the normals).
    depth_gt: `[B, S, S]` ground-truth depth, background at its maximum.
    recon_depth: `[B, S, S]` predicted depth in the input view (the
      original branch's), `renderer.far_depth` where nothing is seen.
    reference_depth: `[S, S]` the average ground-truth depth of the split.

  Returns:
    Dict method -> {metric: `[B]`} for `METRICS`. All methods use the same
    mask, the reference's: foreground in the ground truth and covered by
    the original branch's prediction, each eroded by one pixel.
  """
  mask = metrics.evaluation_mask(depth_gt,
                                 renderer.coverage_mask(recon_depth))
  normal_gt = renderer.normals_from_depth(depth_gt)
  predictions = {
      "model": recon_depth,
      "null_depth": tf.ones_like(depth_gt) * renderer.rot_center_depth,
      "average_gt_depth": tf.broadcast_to(reference_depth, tf.shape(depth_gt)),
  }
  scores = {}
  for name, depth in predictions.items():
    normal = renderer.normals_from_depth(depth)
    scores[name] = {
        "side": metrics.scale_invariant_depth_error(depth, depth_gt, mask),
        "mad": metrics.mean_angle_deviation(normal, normal_gt, mask),
        "mad_acos": metrics.mean_angle_deviation_acos(normal, normal_gt,
                                                      mask),
    }
  return scores


def average_depth(dataset):
  """Per-pixel mean ground-truth depth `[S, S]` over a dataset."""
  total, count = 0.0, 0
  for batch in dataset:
    total += tf.reduce_sum(batch["depth"], axis=0)
    count += int(batch["depth"].shape[0])
  if not count:
    raise datasets.DataError("The evaluation split is empty.")
  return total / count


def evaluate(model, dataset, predict=None):
  """Scores a dataset; returns dict method -> {metric: `[N]`} (`METRICS`).

  `predict` (optional) is a compiled `model(x, training=False)`. Images
  without valid pixels (empty mask) are dropped, with a warning.
  """
  reference = average_depth(dataset)
  predict = predict or tf.function(lambda x: model(x, training=False))
  results = {m: {k: [] for k in METRICS} for m in METHODS}
  for batch in dataset:
    outputs = predict(batch["image"])
    scores = score_batch(model.renderer, batch["depth"],
                         outputs["recon_depth"], reference)
    for method, per_metric in scores.items():
      for key, value in per_metric.items():
        results[method][key].append(value.numpy())
  for method in results:
    for key in METRICS:
      results[method][key] = np.concatenate(results[method][key])
  valid = np.isfinite(results["model"]["side"])
  if not valid.all():
    logging.warning("%d images have no valid pixels and are left out.",
                    int((~valid).sum()))
  return {m: {k: v[valid] for k, v in r.items()} for m, r in results.items()}


def format_table(results, paper=True):
  """Mean +- std table of SIDE (x 1e-2), MAD and MAD-acos (degrees)."""
  lines = [f"{'method':22s} {'SIDE (x1e-2)':>18s} {'MAD (deg)':>18s} "
           f"{'MAD-acos (deg)':>18s}"]
  for method, r in results.items():
    cells = [r["side"] * 100, r["mad"], r["mad_acos"]]
    lines.append(f"{method:22s} " + " ".join(
        f"{c.mean():9.3f} +- {c.std():6.3f}" if i == 0 else
        f"{c.mean():9.2f} +- {c.std():6.2f}" for i, c in enumerate(cells)))
  if paper:
    lines.append("paper, Table 2 (BFM; SIDE / MAD-acos): model 0.793 / "
                 "16.51; null depth 2.723 / 43.34; average g.t. depth "
                 "1.990 / 23.26")
  return "\n".join(lines)


def write_scores(path, results):
  """Per-image CSV: index, then every metric of every method (atomic write)."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["index"] + [f"{m}_{k}" for m in results
                                 for k in METRICS])
    for i in range(len(results["model"]["side"])):
      writer.writerow([i] + [f"{results[m][k][i]:.6f}" for m in results
                             for k in METRICS])
  os.replace(tmp, path)


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


def load_model(checkpoint):
  """Builds the gin-configured model and loads `checkpoint` into it.

  Args:
    checkpoint: a model_dir of `tf_unsup3d.train` (its newest intact
      checkpoint is used: newer unreadable ones are skipped with a warning),
      a `ckpt-N` prefix or a `.weights.h5` file.

  Raises:
    FileNotFoundError: nothing to load there.
    CheckpointError: the checkpoint is unreadable, or it does not hold every
      variable of the configured model (a config mismatch, e.g.
      `Unsup3D.use_conf_map` or `Unsup3D.nf`), so a random model is never
      returned.
  """
  model = model_lib.Unsup3D()
  model.build((None, model.image_size, model.image_size, 3))
  if checkpoint.endswith(".weights.h5"):
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


def define_flags():
  """Command-line flags of the evaluation CLI."""
  configurable.gin_flags()
  flags.DEFINE_string("checkpoint", None, "A model_dir, a checkpoint prefix "
                      "or a .weights.h5 file.")
  flags.DEFINE_string("split", "test", "Split to evaluate.")
  flags.DEFINE_string("output_dir", None, "Where to write scores (default: "
                      "the model_dir or the checkpoint's directory).")
  flags.DEFINE_integer("batch_size", 32, "Images per batch.")


def main(argv):
  del argv
  # Training configs also bind the training loop and the data generator.
  configurable.parse_gin_flags(skip_unknown=("train", "generate_synthetic"))
  args = flags.FLAGS
  if not args.checkpoint:
    raise app.UsageError("--checkpoint is required.")
  try:
    model = load_model(args.checkpoint)
    dataset, info = datasets.make_dataset(args.split, training=False,
                                          batch_size=args.batch_size)
    if "depth" not in dataset.element_spec:
      raise datasets.DataError("This dataset has no ground-truth depth: use "
                               "the paired layout (gin make_dataset.layout).")
  except (datasets.DataError, FileNotFoundError) as e:
    # Missing data or weights: the message says what to get and where.
    raise SystemExit(f"evaluate: {e}") from None
  results = evaluate(model, dataset)
  output_dir = args.output_dir or (
      args.checkpoint if os.path.isdir(args.checkpoint)
      else os.path.dirname(args.checkpoint))
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f"scores_{args.split}.csv")
  write_scores(path, results)
  print(f"{len(results['model']['side'])} images of split {args.split} "
        f"({info['num_skipped']} unreadable files skipped)")
  print(format_table(results))
  print(f"Per-image scores: {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
