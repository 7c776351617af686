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
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d import metrics
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
  with atomic_files.replacing(path) as tmp:
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["index"] + [f"{m}_{k}" for m in results
                                   for k in METRICS])
      for i in range(len(results["model"]["side"])):
        writer.writerow([i] + [f"{results[m][k][i]:.6f}" for m in results
                               for k in METRICS])


def define_flags():
  """Command-line flags of the evaluation CLI."""
  configurable.gin_flags()
  checkpoints.define_checkpoint_flag()
  flags.DEFINE_string("split", "test", "Split to evaluate.")
  flags.DEFINE_string("output_dir", None, "Where to write scores (default: "
                      "the model_dir or the checkpoint's directory).")
  flags.DEFINE_integer("batch_size", 32, "Images per batch.")


def main(argv):
  del argv
  configurable.parse_gin_flags(skip_unknown=configurable.TRAINING_PIPELINE)
  args = flags.FLAGS
  if not args.checkpoint:
    raise app.UsageError("--checkpoint is required.")
  try:
    model = checkpoints.load_model(args.checkpoint)
    datasets.check_image_size(model.image_size)
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
