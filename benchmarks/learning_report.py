"""Numbers, plots and text of the learning benchmark (`benchmarks/learning.py`).

Pure pieces, each testable on arrays: reading validation curves back from
TensorBoard event files, correlation and least-squares slope, ratios to the
better baseline, loss shares, depth relief, the PNG plots (matplotlib, Agg,
no pyplot state) and the turntable GIF (the model's renderer through
`tf_unsup3d.demo` and `tf_unsup3d.visualization`); then the pieces of a
stage that need the model (test split, measurement, figures, report files).
Depth is in scene units, SIDE in log depth (tables show it x 1e-2), MAD in
degrees, views in radians.
"""

import glob
import io
import json
import math
import os

from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import demo
from tf_unsup3d import evaluate as evaluate_lib
from tf_unsup3d import metrics
from tf_unsup3d import visualization
from tf_unsup3d.data import datasets
from tf_unsup3d.data import synthetic

BASELINES = ("null_depth", "average_gt_depth")
# Plotted and held against the acceptance limits; the tables also carry
# MAD in the reference's acos convention (evaluate.METRICS).
METRICS = ("side", "mad")
# Paper, Table 2: the method over the better baseline (average g.t. depth);
# its MADs are of the acos convention.
PAPER_RATIO = {"side": 0.793 / 1.990, "mad": 16.51 / 23.26}
# Acceptance: ratio to the better baseline at most this after N minutes.
ACCEPTANCE = {30: {"side": 0.75, "mad": 0.85}, 120: {"side": 0.55, "mad": 0.75}}
FILES = {"report": "learning_benchmark.txt", "json": "learning_benchmark.json",
         "learning_curve": "learning_curve.png",
         "budget_curve": "learning_budget.png", "views": "learning_views.png",
         "faces": "learning_faces.png", "turntable": "learning_turntable.gif"}


# --- Numbers ------------------------------------------------------------------

def summarise_results(results):
  """`evaluate.evaluate` output -> {method: {side_mean, side_std, mad_mean,
  mad_std, mad_acos_mean, mad_acos_std, n}} (plain floats; the metrics of
  `evaluate.METRICS` that the results hold)."""
  out = {}
  for method, r in results.items():
    out[method] = {"n": int(len(r["side"]))}
    for key in (k for k in evaluate_lib.METRICS if k in r):
      values = np.asarray(r[key], np.float64)
      out[method][f"{key}_mean"] = float(values.mean())
      out[method][f"{key}_std"] = float(values.std())
  return out


def ratios_to_better_baseline(means):
  """Each method's mean over the better (lower) baseline's, per metric.

  Args:
    means: {method: {'side': float, 'mad': float}} (or `*_mean` keys, as
      `summarise_results` gives); must hold both `BASELINES`.

  Returns:
    {method: {'side': ratio, 'mad': ratio}}; the better baseline reads 1.
  """
  get = lambda m, k: means[m][k] if k in means[m] else means[m][f"{k}_mean"]
  keys = [k for k in evaluate_lib.METRICS
          if all(k in means[m] or f"{k}_mean" in means[m] for m in means)]
  best = {k: min(get(b, k) for b in BASELINES) for k in keys}
  return {m: {k: get(m, k) / best[k] for k in keys} for m in means}


def fit_line(true, predicted):
  """Pearson correlation and least-squares line predicted = slope true + b.

  Args:
    true, predicted: `[N]` arrays (same units). Non-finite pairs are dropped.

  Returns:
    {'correlation', 'slope', 'intercept', 'n'}; NaN where undefined (fewer
    than two points, or `true` or `predicted` constant).
  """
  true = np.asarray(true, np.float64).ravel()
  predicted = np.asarray(predicted, np.float64).ravel()
  keep = np.isfinite(true) & np.isfinite(predicted)
  true, predicted = true[keep], predicted[keep]
  nan = {"correlation": math.nan, "slope": math.nan, "intercept": math.nan,
         "n": int(len(true))}
  if len(true) < 2:
    return nan
  dt, dp = true - true.mean(), predicted - predicted.mean()
  sxx, syy, sxy = (dt * dt).sum(), (dp * dp).sum(), (dt * dp).sum()
  if sxx <= 0:
    return nan
  slope = sxy / sxx
  correlation = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
  return {"correlation": float(correlation), "slope": float(slope),
          "intercept": float(predicted.mean() - slope * true.mean()),
          "n": int(len(true))}


# Ground-truth factors of views.csv against the model's outputs that could
# explain them: view (radians, scene units; its views.csv columns) and light
# (dx, dy; DESIGN section 2) in the object's frame, as the model's
# (`true_factors`).
TRUE_VIEW_COLUMNS = {"yaw": "ry", "pitch": "rx", "roll": "rz", "tx": "tx",
                     "ty": "ty"}
TRUE_FACTORS = (*TRUE_VIEW_COLUMNS, "light_dx", "light_dy")
PREDICTED_FACTORS = {"yaw": ("view", 1), "pitch": ("view", 0),
                     "roll": ("view", 2), "tx": ("view", 3),
                     "ty": ("view", 4), "light_dx": ("light", 2),
                     "light_dy": ("light", 3)}


def true_factors(views):
  """{name: `[N]`} of `TRUE_FACTORS` from `read_true_views` columns."""
  true = {k: views[c] for k, c in TRUE_VIEW_COLUMNS.items()}
  true["light_dx"], true["light_dy"] = synthetic.object_frame_light(views)
  return true


def factor_explainers(true, predicted):
  """Which predicted factor follows each true factor most closely.

  A model that explains a turned face by a side light (or a translation by a
  turn) shows it here: the true yaw's strongest predicted factor is then
  light_dx, not yaw. The true light is in the object's frame, as the
  model's: there the light of a turned face follows the turn (on the
  synthetic test split the true yaw and object-frame dx correlate at about
  -0.7), so only a predicted light_dx closer to the yaw than that is a sign.

  Args:
    true: {name: `[N]`} ground truth, names of `TRUE_FACTORS`.
    predicted: {name: `[N]`} the model's, names of `PREDICTED_FACTORS`.

  Returns:
    {true name: {"own": correlation with the predicted factor of the same
    name, "strongest": the predicted name of largest |correlation|,
    "correlation": that correlation}}; NaN correlations are skipped.
  """
  table = {}
  for name, values in true.items():
    corr = {p: fit_line(values, v)["correlation"] for p, v in
            predicted.items()}
    finite = {p: c for p, c in corr.items() if math.isfinite(c)}
    strongest = (max(finite, key=lambda p: abs(finite[p])) if finite
                 else None)
    table[name] = {"own": corr.get(name, math.nan), "strongest": strongest,
                   "correlation": finite.get(strongest, math.nan)}
  return table


def loss_weights(lam_flip, lam_perc, lam_depth_sm, lam_multiscale=0.0,
                 lam_rerender_view=0.0, lam_depth_deviation=0.0):
  """Weight of each loss term in the total (DESIGN section 1)."""
  return {"photometric": 1.0, "photometric_flip": lam_flip,
          "perceptual": lam_perc, "perceptual_flip": lam_perc * lam_flip,
          "multiscale": lam_multiscale,
          "multiscale_flip": lam_multiscale * lam_flip,
          "rerender_view": lam_rerender_view,
          # Computed only with Unsup3D.rerender_canonical_depth.
          "rerender_depth": lam_rerender_view,
          "depth_smoothness": lam_depth_sm,
          "depth_deviation": lam_depth_deviation}


def loss_shares(terms, weights):
  """Share of the total each weighted term carries: w * term / sum(w * term).

  Args:
    terms: {name: value} (no 'total'); names without a weight are left out
      (the caller reports them).
    weights: {name: weight}, e.g. `loss_weights(...)`.

  Returns:
    {name: share}, summing to 1. With confidence maps a term (log sigma) can
    be negative, and shares then fall outside [0, 1].
  """
  weighted = {k: weights[k] * float(v) for k, v in terms.items()
              if k in weights}
  total = sum(weighted.values())
  return {k: (v / total if total else math.nan) for k, v in weighted.items()}


def relief(depth, mask):
  """max - min of `[B, H, W]` depth over a {0, 1} mask, per image `[B]`.

  NaN where the mask is empty.
  """
  depth = np.asarray(depth, np.float64)
  mask = np.asarray(mask) > 0.5
  high = np.where(mask, depth, -np.inf).max(axis=(1, 2))
  low = np.where(mask, depth, np.inf).min(axis=(1, 2))
  return np.where(mask.any(axis=(1, 2)), high - low, np.nan)


def light_strengths(light, diff_light_range, off_fraction=0.02):
  """Mean ambient and diffuse strengths of predicted lights `[B, 4]`.

  Columns 0 and 1 are the ambient and diffuse strengths in their ranges
  (the model's `light` output). A diffuse strength at most `off_fraction`
  of its range above the range's low end counts as off: with the diffuse
  term off the shading is flat and the depth gets no gradient through it
  (as in the 128 px runs at step size 3e-4, README, Resolution).

  Args:
    light: `[B, 4]` predicted lights.
    diff_light_range: the model's (low, high) diffuse range.
    off_fraction: share of the range counted as off.

  Returns:
    {"ambient", "diffuse": means, "diffuse_off": share of images in [0, 1]}.
  """
  light = np.asarray(light, np.float64)
  low, high = diff_light_range
  off = light[:, 1] <= low + off_fraction * (high - low)
  return {"ambient": float(light[:, 0].mean()),
          "diffuse": float(light[:, 1].mean()),
          "diffuse_off": float(off.mean())}


NETWORKS = ("net_depth", "net_albedo", "net_light", "net_view", "net_conf")


def kernel_rms(model):
  """Root-mean-square of each network's convolution (and dense) kernels.

  The L2 decay added to the gradient shrinks the weights the loss does not
  hold, and Adam moves each weight by about the learning rate per step
  whatever its size: kernels far below their initial RMS (about 0.02 at
  nf 32) belong to a network the loss has stopped using, as the 128 px
  depth network whose output stopped depending on the image (README,
  Resolution).

  Returns:
    {network attribute: {"min", "median"} over its kernels}, for the
    networks of `NETWORKS` the model has.
  """
  found = {}
  for name in NETWORKS:
    net = getattr(model, name, None)
    if net is None:
      continue
    rms = [float(np.sqrt(np.mean(np.square(v.numpy()))))
           for v in net.trainable_variables if v.path.endswith("kernel")]
    if rms:
      found[name] = {"min": min(rms), "median": float(np.median(rms))}
  return found


def mean_shape_scores(renderer, depth_gt, canon_depth, views, batch_size=64):
  """Scores of the model's mean canonical depth at each face's own view.

  Every face's canonical depth is replaced by the mean over the split and
  rendered at that face's predicted view, so the row tells the shape the
  faces share from what each face adds: below the model's own scores, the
  per-face part of the depth costs more than it explains.

  Args:
    renderer: the model's `Renderer`.
    depth_gt: `[N, S, S]` ground-truth depth.
    canon_depth: `[N, S, S]` predicted canonical depth (scene units).
    views: `[N, 6]` predicted views, decoded (`Unsup3D.decode_view`).
    batch_size: images per rendering call.

  Returns:
    {"side", "mad", "side_ratio", "mad_ratio"}: means over the images with
    valid pixels, and each to the better baseline on the same pixels.
  """
  template = tf.constant(np.mean(canon_depth, axis=0), tf.float32)
  reference = tf.constant(np.mean(depth_gt, axis=0), tf.float32)
  per_image = {}  # method -> metric -> [per-image scores of each batch]
  for start in range(0, len(depth_gt), batch_size):
    part = slice(start, start + batch_size)
    views_part = tf.constant(views[part], tf.float32)
    shapes = tf.broadcast_to(template, [views_part.shape[0], *template.shape])
    scores = evaluate_lib.score_batch(
        renderer, tf.constant(depth_gt[part], tf.float32),
        renderer.warp_canon_depth(shapes, views_part), reference)
    for method, per_metric in scores.items():
      for metric in METRICS:
        per_image.setdefault(method, {}).setdefault(metric, []).append(
            np.asarray(per_metric[metric]))
  means = {method: {k: float(np.nanmean(np.concatenate(v)))
                    for k, v in per_metric.items()}
           for method, per_metric in per_image.items()}
  ratios = ratios_to_better_baseline(means)["model"]
  return {**means["model"], **{f"{k}_ratio": v for k, v in ratios.items()}}


def rerendered_view_fits(model, images, num_images=128, seed=0):
  """How well the view network reads turns of renderings of its own factors.

  The first num_images test images' predicted factors, mirror-symmetrised,
  are rendered at views uniform within the model's re-rendering range
  (`Unsup3D.read_rerendered_views`); a view network that reads these but
  not the photos meets a domain gap, one that reads neither has not learnt
  to see turns.

  Args:
    model: an `Unsup3D`.
    images: `[N, S, S, 3]` in [0, 1].
    num_images: images used (the first ones).
    seed: seed of the target views.

  Returns:
    {'pitch', 'yaw', 'roll'}: `fit_line` of the read against the target
    component (encoder units).
  """
  images = np.asarray(images[:num_images], np.float32)
  rng = np.random.default_rng(seed)
  scale = model.rerender_view_scale
  target = rng.uniform(-scale, scale, (len(images), 6)).astype(np.float32)
  read, target = model.read_rerendered_views(model(images), target)
  read, target = np.asarray(read), np.asarray(target)
  return {name: fit_line(target[:, i], read[:, i])
          for i, name in enumerate(("pitch", "yaw", "roll"))}


def read_true_views(path, indices):
  """Rows of a views.csv for the given image indices (sorted-file order).

  Args:
    path: `<split>/views.csv` (`synthetic.read_views`: radians; light terms).
    indices: `[N]` image indices (the `index` column) to return, in order.

  Returns:
    {column: `[N]` float array}, or None when the file does not exist.

  Raises:
    ValueError: an unexpected header, or an index has no row.
  """
  views = synthetic.read_views(os.path.dirname(path))
  if views is None:
    return None
  row_of = {int(i): row for row, i in enumerate(views["index"])}
  absent = [i for i in indices if int(i) not in row_of]
  if absent:
    raise ValueError(f"{path} has no rows for images {absent[:5]} "
                     f"({len(absent)} in all).")
  rows = [row_of[int(i)] for i in indices]
  return {c: views[c][rows] for c in synthetic.VIEW_COLUMNS[1:]}


def read_scalars(log_dir, prefix=""):
  """Scalar summaries of every event file in `log_dir`, by tag.

  Values written by TF2 `tf.summary.scalar` are tensors (decoded with
  `tf.make_ndarray`); TF1 `simple_value`s work too. A step logged twice
  (a resumed run) keeps the later write.

  Returns:
    {tag: (steps `[N]` int64, values `[N]` float64)} sorted by step, for
    tags starting with `prefix`; {} when there are no event files.
  """
  points = {}
  for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if not value.tag.startswith(prefix):
          continue
        if value.HasField("simple_value"):
          number = value.simple_value
        elif value.HasField("tensor"):
          array = tf.make_ndarray(value.tensor)
          if array.size != 1:
            continue
          number = array.item()
        else:
          continue
        key = (int(event.step), float(event.wall_time))
        points.setdefault(value.tag, {})[key] = float(number)
  curves = {}
  for tag, values in points.items():
    latest = {}
    for (step, _), number in sorted(values.items()):
      latest[step] = number
    steps = np.array(sorted(latest), np.int64)
    curves[tag] = (steps, np.array([latest[s] for s in steps], np.float64))
  return curves


def acceptance(stages):
  """Checks `ACCEPTANCE` against the stage whose budget is each threshold's.

  Args:
    stages: dicts with 'budget_minutes' and 'ratio' {'side', 'mad'}.

  Returns:
    [{'minutes', 'metric', 'ratio', 'limit', 'passed'}], for each limit
    whose minutes a stage's budget equals (other budgets are not checked).
  """
  checks = []
  for minutes, limits in ACCEPTANCE.items():
    stage = next((s for s in stages
                  if math.isclose(s["budget_minutes"], minutes)), None)
    if stage is None:
      continue
    for metric, limit in limits.items():
      ratio = stage["ratio"][metric]
      checks.append({"minutes": minutes, "metric": metric, "ratio": ratio,
                     "limit": limit,
                     "passed": ratio is not None and bool(ratio <= limit)})
  return checks


def stage_acceptance(stages):
  """`acceptance` of stage records (`measure_stage`): the model's ratios."""
  return acceptance([{"budget_minutes": s["budget_minutes"],
                      "ratio": {k: s["test"]["model"][f"{k}_ratio"]
                                for k in METRICS}} for s in stages])


def resume_stages(previous, budgets):
  """Stages of an earlier run of the same model_dir that this run keeps.

  Args:
    previous: the earlier `learning_benchmark.json` dict (or None).
    budgets: this run's cumulative budgets in minutes, increasing.

  Returns:
    The leading earlier stages whose budgets equal this run's first ones;
    training continues from the last of them.
  """
  kept = []
  for stage, budget in zip((previous or {}).get("stages", []), budgets):
    if not math.isclose(stage["budget_minutes"], budget):
      break
    kept.append(stage)
  return kept


def json_safe(value):
  """NaN / inf -> None and NumPy scalars -> Python numbers, recursively."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


# --- Plots ----------------------------------------------------------------------

_COLOURS = {"model": "tab:blue", "null_depth": "tab:grey",
            "average_gt_depth": "tab:orange"}


def _save(figure, path):
  """Renders a Figure to PNG bytes (Agg) and writes them atomically."""
  FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  atomic_files.write_bytes(path, buffer.getvalue())
  return path


def plot_learning_curve(path, curves, stage_marks=()):
  """Validation SIDE and MAD per epoch: model against both baselines.

  Args:
    path: output PNG.
    curves: `read_scalars` output with tags `val/side_<method>` and
      `val/mad_<method>` (methods model, null_depth, average_gt_depth).
    stage_marks: [(step, label)], drawn as vertical lines (budget ends).
  """
  figure = Figure(figsize=(11, 4.2), layout="constrained")
  axes = figure.subplots(1, 2)
  titles = {"side": ("validation SIDE", "SIDE (x1e-2)", 100.0),
            "mad": ("validation MAD", "MAD (degrees)", 1.0)}
  for ax, metric in zip(axes, METRICS):
    title, label, scale = titles[metric]
    drawn = False
    for method, colour in _COLOURS.items():
      tag = f"val/{metric}_{method}"
      if tag in curves and len(curves[tag][0]):
        steps, values = curves[tag]
        ax.plot(steps, values * scale, "o-" if len(steps) < 30 else "-",
                color=colour, label=method, markersize=3)
        drawn = True
    for step, text in stage_marks:
      ax.axvline(step, color="k", linestyle=":", linewidth=0.8)
      ax.annotate(text, (step, 0.98), xycoords=("data", "axes fraction"),
                  xytext=(-3, 0), textcoords="offset points", fontsize=8,
                  rotation=90, ha="right", va="top")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if not drawn:
      ax.text(0.5, 0.5, "no validation epochs logged yet",
              transform=ax.transAxes, ha="center", va="center")
    else:
      ax.legend(fontsize=8)
    ax.set(title=title, xlabel="training step", ylabel=label)
    ax.grid(alpha=0.3)
  return _save(figure, path)


def plot_budget_curve(path, minutes, ratios):
  """Model / better baseline on test against training minutes.

  Args:
    path: output PNG.
    minutes: `[N]` cumulative training minutes of each stage.
    ratios: {'side': [N], 'mad': [N]} the model's ratios at those stages.

  Draws the acceptance limits (`ACCEPTANCE`, a staircase from the first
  limit's minute), the paper's ratio (dashed) and 1 (baseline level).
  """
  figure = Figure(figsize=(11, 4.2), layout="constrained")
  axes = figure.subplots(1, 2)
  minutes = np.asarray(minutes, np.float64)
  limit_minutes = sorted(ACCEPTANCE)
  x_low = min([*minutes[minutes > 0], limit_minutes[0]]) / 1.5
  x_high = max([*minutes, limit_minutes[-1]]) * 1.5
  for ax, metric in zip(axes, METRICS):
    values = np.asarray(ratios[metric], np.float64)
    ax.plot(minutes, values, "o-", color=_COLOURS["model"],
            label="model / better baseline")
    for x, y in zip(minutes, values):
      ax.annotate(f"{y:.2f}", (x, y), xytext=(4, 4),
                  textcoords="offset points", fontsize=8)
    stairs_x = limit_minutes + [x_high]
    stairs_y = [ACCEPTANCE[m][metric] for m in limit_minutes]
    limits = ", ".join(f"{ACCEPTANCE[m][metric]:.2f} at {m} min"
                       for m in limit_minutes)
    ax.step(stairs_x, stairs_y + stairs_y[-1:], where="post", color="tab:red",
            linewidth=1.2, label=f"acceptance: {limits}")
    ax.plot(limit_minutes, stairs_y, "v", color="tab:red")
    ax.axhline(PAPER_RATIO[metric], color="tab:green", linestyle="--",
               label=f"paper {PAPER_RATIO[metric]:.2f}")
    ax.axhline(1.0, color="tab:grey", linewidth=0.8, label="baseline level")
    ax.set_xscale("log")
    # Stage minutes, and limit minutes that no stage is close to.
    ticks = sorted(set(minutes.tolist()) | {
        m for m in limit_minutes
        if not np.any(np.abs(np.log(minutes / m)) < 0.15)})
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks], fontsize=8)
    ax.minorticks_off()
    top = max(1.1, float(np.nanmax(values)) * 1.05 if len(values) else 1.1)
    ax.set(xlim=(x_low, x_high), ylim=(0.0, top), xlabel="training minutes",
           ylabel="ratio (lower is better)",
           title=f"test {metric.upper()}: model / better baseline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
  return _save(figure, path)


def plot_view_scatter(path, true_views, predicted_views):
  """Predicted against true yaw and pitch, in degrees.

  Args:
    path: output PNG.
    true_views, predicted_views: {'yaw': [N], 'pitch': [N]} in radians.
  Titles give `fit_line`'s correlation and slope.
  """
  figure = Figure(figsize=(10, 4.8), layout="constrained")
  axes = figure.subplots(1, 2)
  for ax, name in zip(axes, ("yaw", "pitch")):
    true = np.degrees(np.asarray(true_views[name], np.float64))
    predicted = np.degrees(np.asarray(predicted_views[name], np.float64))
    fit = fit_line(true, predicted)
    ax.scatter(true, predicted, s=10, alpha=0.6, color="tab:blue")
    span = 1.08 * max(1.0, float(np.nanmax(np.abs(np.concatenate(
        [true, predicted])))))
    line = np.array([-span, span])
    ax.plot(line, line, "k--", linewidth=0.8, label="identity")
    if math.isfinite(fit["slope"]):
      ax.plot(line, fit["slope"] * line + fit["intercept"], color="tab:red",
              label="least squares")
    ax.set(xlim=(-span, span), ylim=(-span, span), aspect="equal",
           xlabel=f"true {name} (deg)", ylabel=f"predicted {name} (deg)",
           title=f"{name}: r = {fit['correlation']:.2f}, slope = "
                 f"{fit['slope']:.2f} (n = {fit['n']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
  return _save(figure, path)


def plot_faces(path, faces, depth_range, titles=None):
  """A row per face: input, canonical depth and shading, reconstructed and
  ground-truth depth, and depth profiles through the centre row and column.

  Args:
    path: output PNG.
    faces: dict of NumPy arrays for K faces of side S: `image` [K, S, S, 3]
      in [0, 1], `canon_depth` [K, S, S], `canon_shading` [K, S, S] in
      [0, 1], `recon_depth` [K, S, S], `recon_mask` [K, S, S] {0, 1},
      `gt_depth` [K, S, S] (background at its maximum).
    depth_range: (near, far) of the depth colour scale (shared by every
      depth panel; near is bright, like `visualization.depth_to_rgb`).
    titles: optional K strings shown under each input.
  """
  images = np.asarray(faces["image"])
  count, size = images.shape[:2]
  gt = np.asarray(faces["gt_depth"], np.float64)
  foreground = gt < gt.max(axis=(1, 2), keepdims=True)
  predicted = np.where(np.asarray(faces["recon_mask"]) > 0.5,
                       np.asarray(faces["recon_depth"], np.float64), np.nan)
  near, far = depth_range
  figure = Figure(figsize=(16, 2.3 * count + 1.2), layout="constrained")
  axes = figure.subplots(count, 7, squeeze=False,
                         width_ratios=[1, 1, 1, 1, 1, 1.6, 1.6])
  headers = ("input", "canonical depth", "canonical shading",
             "recon. depth (input view)", "ground-truth depth",
             f"profile: row {(size - 1) // 2}",
             f"profile: column {(size - 1) // 2}")
  depth_style = {"cmap": "viridis_r", "vmin": near, "vmax": far,
                 "interpolation": "nearest"}
  mappable = None
  centre = (size - 1) // 2
  for k in range(count):
    row = axes[k]
    row[0].imshow(np.clip(images[k], 0, 1), interpolation="nearest")
    row[1].imshow(faces["canon_depth"][k], **depth_style)
    row[2].imshow(faces["canon_shading"][k], cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
    row[3].imshow(predicted[k], **depth_style)
    mappable = row[4].imshow(np.where(foreground[k], gt[k], np.nan),
                             **depth_style)
    for ax in row[:5]:
      ax.set_xticks([])
      ax.set_yticks([])
    row[3].axhline(centre, color="w", linewidth=0.5, alpha=0.6)
    row[3].axvline(centre, color="w", linewidth=0.5, alpha=0.6)
    if titles is not None:
      row[0].set_xlabel(titles[k], fontsize=7)
    pixels = np.arange(size)
    for ax, gt_line, pred_line in (
        (row[5], np.where(foreground[k, centre], gt[k, centre], np.nan),
         np.where(foreground[k, centre], predicted[k, centre], np.nan)),
        (row[6], np.where(foreground[k, :, centre], gt[k, :, centre], np.nan),
         np.where(foreground[k, :, centre], predicted[k, :, centre], np.nan))):
      ax.plot(pixels, gt_line, color="k", label="ground truth")
      ax.plot(pixels, pred_line, color="tab:blue", label="reconstructed")
      ax.set_xlim(0, size - 1)
      ax.set_ylim(far, near)  # near at the top: a face's profile
      ax.tick_params(labelsize=7)
      ax.grid(alpha=0.3)
    if k == 0:
      row[5].legend(fontsize=7, loc="lower center")
  for ax, header in zip(axes[0], headers):
    ax.set_title(header, fontsize=9)
  axes[-1][5].set_xlabel("pixel (column)", fontsize=8)
  axes[-1][6].set_xlabel("pixel (row)", fontsize=8)
  for row in axes:
    row[5].set_ylabel("depth (near up)", fontsize=8)
  figure.colorbar(mappable, ax=axes[:, 1:5].ravel().tolist(), shrink=0.8,
                  location="bottom", aspect=40,
                  label="depth (scene units, near = bright)")
  return _save(figure, path)


def depth_colour_range(gt_depth, renderer_range):
  """(near, far) for `plot_faces`: the ground-truth foreground's 1st-99th
  percentile, widened by a quarter of its span, clipped to the model's
  (min_depth, max_depth + margin)."""
  gt = np.asarray(gt_depth, np.float64)
  values = gt[gt < gt.max(axis=(1, 2), keepdims=True)]
  if not values.size:
    return renderer_range
  low, high = np.percentile(values, [1, 99])
  pad = max(high - low, 1e-3) / 4
  return (max(low - pad, renderer_range[0]), min(high + pad, renderer_range[1]))


# --- Turntable ------------------------------------------------------------------

def turntable_frames(render_yaw, images, outputs, num_frames=16, max_angle=60.0,
                     zoom=2):
  """Frames of a turntable of K faces: input, textured mesh, grey shape.

  Args:
    render_yaw: `Renderer.render_yaw` (or `demo.Predictor.render_yaw`).
    images: `[K, S, S, 3]` inputs in [0, 1].
    outputs: model outputs for them (NumPy): `canon_image`, `canon_normal`,
      `canon_depth`.
    num_frames, max_angle: the sweep (`demo.yaw_angles`, degrees).
    zoom: nearest-neighbour upscaling of each frame.

  Returns:
    `[T, H, W, 3]` frames in [0, 1]: one column per face, rows input /
    turntable / shape (`demo.shape_shading`), laid out by
    `visualization.image_grid`.
  """
  angles = demo.yaw_angles(num_frames, max_angle)
  depth = tf.constant(outputs["canon_depth"], tf.float32)
  textured = np.asarray(render_yaw(
      tf.constant(outputs["canon_image"], tf.float32), depth, angles))
  shape = np.asarray(render_yaw(
      tf.constant(demo.shape_shading(outputs["canon_normal"]), tf.float32),
      depth, angles))
  images = np.asarray(images, np.float32)
  frames = []
  for t in range(len(angles)):
    columns = [np.stack([images[k], textured[k, t], shape[k, t]])
               for k in range(len(images))]
    grid = visualization.image_grid(columns).astype(np.float32) / 255.0
    frames.append(grid.repeat(zoom, axis=0).repeat(zoom, axis=1))
  return np.stack(frames)


def write_turntable(path, frames, frame_ms=80):
  """Writes `[T, H, W, 3]` frames in [0, 1] as a looping GIF, atomically."""
  atomic_files.write_bytes(path, visualization.encode_gif(frames, frame_ms))
  return path


# --- Text -----------------------------------------------------------------------

def _fmt(value, spec, scale=1.0):
  """`format(value * scale, spec)`, or 'n/a' for None / NaN (right-aligned)."""
  if value is None or not math.isfinite(value):
    return format("n/a", ">" + "".join(c for c in spec.split(".")[0]
                                        if c.isdigit()))
  return format(value * scale, spec)


def format_stage(stage):
  """Text block of one budget stage (a dict as `learning.py` records it)."""
  lines = [
      f"--- budget {stage['budget_minutes']:g} min: {stage['train_minutes']:.2f}"
      f" min trained ({stage['stage_minutes']:.2f} in this stage), step "
      f"{stage['steps']}, epoch {stage['epochs']}, "
      f"{_fmt(stage['images_per_second'], '.1f')} img/s; "
      f"{stage['num_test_images']} test images",
      f"{'method':22s} {'SIDE x1e-2':>11s} {'ratio':>6s} {'MAD deg':>9s} "
      f"{'ratio':>6s} {'MAD-acos':>9s} {'ratio':>6s}"]
  for method, r in stage["test"].items():
    lines.append(f"{method:22s} {_fmt(r['side_mean'], '11.3f', 100)} "
                 f"{_fmt(r['side_ratio'], '6.2f')} "
                 f"{_fmt(r['mad_mean'], '9.2f')} "
                 f"{_fmt(r['mad_ratio'], '6.2f')} "
                 f"{_fmt(r.get('mad_acos_mean'), '9.2f')} "
                 f"{_fmt(r.get('mad_acos_ratio'), '6.2f')}")
  if stage.get("mean_shape"):  # absent from stages of older reports
    ms = stage["mean_shape"]
    lines.append(
        f"{'  mean canonical depth':22s} {_fmt(ms['side'], '11.3f', 100)} "
        f"{_fmt(ms['side_ratio'], '6.2f')} {_fmt(ms['mad'], '9.2f')} "
        f"{_fmt(ms['mad_ratio'], '6.2f')}   (the model's mean canonical "
        f"depth at each face's predicted view)")
  if stage.get("view"):
    parts = [f"{name} r {_fmt(fit['correlation'], '.2f')}, slope "
             f"{_fmt(fit['slope'], '.2f')}" for name, fit in
             stage["view"].items()]
    lines.append("view (predicted vs true): " + "; ".join(parts))
    if stage.get("explainers"):  # absent from stages of older reports
      parts = [f"{name} <- {e['strongest']} r "
               f"{_fmt(e['correlation'], '.2f')} (own {_fmt(e['own'], '.2f')})"
               for name, e in stage["explainers"].items()]
      lines.append("strongest predicted factor per true factor: " +
                   "; ".join(parts))
  else:
    lines.append(f"view: {stage.get('view_note') or 'not measured'}")
  if stage.get("rerendered_view"):  # absent from stages of older reports
    parts = [f"{name} r {_fmt(fit['correlation'], '.2f')}, slope "
             f"{_fmt(fit['slope'], '.2f')}" for name, fit in
             stage["rerendered_view"].items()]
    lines.append("view network on re-renderings of its own factors (read vs "
                 "rendered): " + "; ".join(parts))
  rl = stage["relief"]
  lines.append(
      f"relief (max - min depth, mean per image): canonical "
      f"{_fmt(rl['canonical_on_gt_face'], '.4f')} vs g.t. "
      f"{_fmt(rl['gt_on_gt_face'], '.4f')} (g.t. face mask, input view); "
      f"reconstructed {_fmt(rl['recon_on_eval_mask'], '.4f')} vs g.t. "
      f"{_fmt(rl['gt_on_eval_mask'], '.4f')} (evaluation mask)")
  if stage.get("relief_fit"):  # absent from stages of older reports
    fit = stage["relief_fit"]
    lines.append(
        f"canonical relief per face against the g.t.'s: r "
        f"{_fmt(fit['correlation'], '.2f')}, slope {_fmt(fit['slope'], '.2f')}")
  if stage.get("light"):  # absent from stages of older reports
    lt = stage["light"]
    lines.append(
        f"light (test mean): ambient {_fmt(lt['ambient'], '.2f')}, diffuse "
        f"{_fmt(lt['diffuse'], '.2f')}; diffuse off (within 2% of its "
        f"range's low end) in {_fmt(lt['diffuse_off'], '.0%')} of the images")
  if stage.get("kernel_rms"):  # absent from stages of older reports
    parts = [f"{name[len('net_'):]} {_fmt(r['min'], '.4f')} / "
             f"{_fmt(r['median'], '.4f')}"
             for name, r in stage["kernel_rms"].items()]
    lines.append("kernel RMS per network (min / median over its "
                 "convolutions): " + ", ".join(parts))
  shares = ", ".join(f"{k} {_fmt(v, '.2f')}"
                     for k, v in stage["loss_shares"].items())
  lines.append(f"loss shares (last training batch, weighted): {shares}" +
               (f"; terms without a known weight: "
                f"{', '.join(stage['unweighted_terms'])}"
                if stage.get("unweighted_terms") else ""))
  return "\n".join(lines)


def format_summary(stages):
  """The stage-by-stage table of the model's ratios, and acceptance."""
  lines = ["budget  minutes  steps   img/s  model SIDE  ratio  model MAD  ratio"]
  for s in stages:
    m = s["test"]["model"]
    lines.append(f"{s['budget_minutes']:6g} {s['train_minutes']:8.2f} "
                 f"{s['steps']:6d} {_fmt(s['images_per_second'], '7.1f')} "
                 f"{_fmt(m['side_mean'], '11.3f', 100)} "
                 f"{_fmt(m['side_ratio'], '6.2f')} "
                 f"{_fmt(m['mad_mean'], '10.2f')} "
                 f"{_fmt(m['mad_ratio'], '6.2f')}")
  lines.append(f"paper (Table 2, BFM): ratio SIDE {PAPER_RATIO['side']:.2f}, "
               f"MAD {PAPER_RATIO['mad']:.2f}")
  checks = stage_acceptance(stages)
  for c in checks:
    lines.append(f"acceptance at {c['minutes']} min: {c['metric'].upper()} "
                 f"ratio {_fmt(c['ratio'], '.2f')} <= {c['limit']:.2f}: "
                 f"{'pass' if c['passed'] else 'FAIL'}")
  if not checks:
    lines.append("acceptance: no stage with a budget of "
                 f"{' or '.join(str(m) for m in ACCEPTANCE)} min")
  return "\n".join(lines)


# --- Stages of a run (TensorFlow: the model, the test split) ---------------------

def load_test_split(data_dir, batch_size=32):
  """The test split: batches, and NumPy images, depth and true views.

  Returns:
    {'dataset', 'image' [N, S, S, 3], 'depth' [N, S, S], 'views' (the
    `read_true_views` dict for the N images, or None) and 'view_note' (why
    views are None)}. Needs the paired layout (ground-truth depth).
  """
  dataset, info = datasets.make_dataset("test", training=False,
                                        batch_size=batch_size)
  if "depth" not in dataset.element_spec:
    raise datasets.DataError("The learning benchmark needs ground-truth depth "
                             "(the paired layout).")
  batches = list(dataset.as_numpy_iterator())
  split = {"dataset": dataset, "views": None, "view_note": None,
           "image": np.concatenate([b["image"] for b in batches]),
           "depth": np.concatenate([b["depth"] for b in batches])}
  path = os.path.join(data_dir, "test", synthetic.VIEWS_FILE)
  bad = set(info["skipped"])
  indices = [k for k, pair in enumerate(datasets.list_paired(data_dir, "test"))
             if not bad.intersection(pair)]
  if not os.path.isfile(path):
    split["view_note"] = f"skipped: no {path} (true views unknown)"
  elif len(indices) != len(split["image"]):
    split["view_note"] = (f"skipped: {len(split['image'])} test images "
                          f"decoded, {len(indices)} listed")
  else:
    split["views"] = read_true_views(path, indices)
  return split


class CapturingPredict:
  """Wraps a compiled forward pass; keeps some outputs of every call (NumPy).

  Passed to `evaluate.evaluate` as its `predict`, so the diagnostics use the
  same forward pass as the scores, in the dataset's order.
  """

  def __init__(self, predict, keys):
    self._predict, self._keys, self._batches = predict, keys, []

  def __call__(self, images):
    out = self._predict(images)
    self._batches.append({k: np.asarray(out[k]) for k in self._keys})
    return out

  def arrays(self):
    return {k: np.concatenate([b[k] for b in self._batches])
            for k in self._keys}


def measure_stage(model, test, summary, budget, previous_minutes,
                  lam_flip_start_epoch=0):
  """Scores the trained model on the test split; the stage record.

  Args:
    model: the trained `Unsup3D`.
    test: `load_test_split` output.
    summary: what `train.train` returned for this stage.
    budget: the stage's cumulative budget (minutes).
    previous_minutes: training minutes before this stage.
    lam_flip_start_epoch: gin `train.lam_flip_start_epoch` (the flip terms
      weigh 1 before it).

  Returns:
    (stage dict, as `format_stage` reads it, and context for
    `write_figures`: the model, compiled predict, raw results, predicted
    yaw and pitch).
  """
  s = model.image_size
  compiled = tf.function(lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec([None, s, s, 3])])
  capture = CapturingPredict(
      compiled, ("view", "light", "canon_depth", "recon_depth",
                 "recon_mask"))
  results = evaluate_lib.evaluate(model, test["dataset"], capture)
  out = capture.arrays()
  table = summarise_results(results)
  ratios = ratios_to_better_baseline(table)
  for method, r in table.items():
    r.update({f"{k}_ratio": v for k, v in ratios[method].items()})
  terms = {k[len("loss/"):]: v for k, v in summary.items()
           if k.startswith("loss/") and k != "loss/total"}
  weights = loss_weights(
      1.0 if summary["epochs"] < lam_flip_start_epoch else model.lam_flip,
      model.lam_perc, summary.get("lam_depth_sm", model.lam_depth_sm),
      model.lam_multiscale,
      summary.get("lam_rerender_view", model.lam_rerender_view),
      summary.get("lam_depth_deviation", model.lam_depth_deviation))
  gt = test["depth"]
  gt_face = metrics.erode_mask(metrics.foreground_mask(gt)).numpy()
  eval_mask = metrics.evaluation_mask(gt, out["recon_mask"]).numpy()
  reliefs = {k: relief(*v) for k, v in {
      "canonical_on_gt_face": (out["canon_depth"], gt_face),
      "gt_on_gt_face": (gt, gt_face),
      "recon_on_eval_mask": (out["recon_depth"], eval_mask),
      "gt_on_eval_mask": (gt, eval_mask)}.items()}  # per image
  predicted = {"yaw": out["view"][:, 1], "pitch": out["view"][:, 0]}
  stage = {
      "budget_minutes": budget, "steps": summary["steps"],
      "train_minutes": previous_minutes + summary["seconds"] / 60,
      "stage_minutes": summary["seconds"] / 60, "epochs": summary["epochs"],
      "images_per_second": summary["images_per_second"],
      "num_test_images": table["model"]["n"], "test": table,
      "view": None, "view_note": test["view_note"],
      "relief": {k: float(np.nanmean(v)) for k, v in reliefs.items()},
      # Does each face's relief follow its own? A spread that does not is
      # per-face noise, which the mean-shape row prices.
      "relief_fit": fit_line(reliefs["gt_on_gt_face"],
                             reliefs["canonical_on_gt_face"]),
      "mean_shape": mean_shape_scores(model.renderer, gt, out["canon_depth"],
                                      out["view"]),
      "rerendered_view": rerendered_view_fits(model, test["image"]),
      "light": light_strengths(out["light"], model.diff_light_range),
      "kernel_rms": kernel_rms(model),
      "loss_terms": terms, "loss_weights": weights,
      "loss_total": summary.get("loss/total"),
      "loss_shares": loss_shares(terms, weights),
      "unweighted_terms": sorted(set(terms) - set(weights)),
      "val": {k: v for k, v in summary.items() if k.startswith("val/")}}
  if test["views"] is not None:
    true = true_factors(test["views"])
    stage["view"] = {k: fit_line(true[k], predicted[k]) for k in predicted}
    stage["explainers"] = factor_explainers(
        true, {k: out[o][:, i] for k, (o, i) in PREDICTED_FACTORS.items()})
  context = {"model": model, "predict": compiled, "results": results,
             "predicted": predicted}
  return stage, context


def write_figures(model_dir, stages, context, test, num_faces=6):
  """Every PNG and the GIF of `FILES` into model_dir; {name: file name}."""
  path = lambda name: os.path.join(model_dir, FILES[name])
  plot_learning_curve(
      path("learning_curve"), read_scalars(os.path.join(model_dir, "val"),
                                           "val/"),
      [(s["steps"], f"{s['budget_minutes']:g} min") for s in stages])
  plot_budget_curve(path("budget_curve"), [s["train_minutes"] for s in stages],
                    {k: [s["test"]["model"][f"{k}_ratio"] for s in stages]
                     for k in METRICS})
  written = ["learning_curve", "budget_curve", "faces", "turntable"]
  predicted, views = context["predicted"], test["views"]
  n = len(test["image"])
  picks = np.linspace(0, n - 1, min(num_faces, n)).round().astype(int)
  if views is not None:
    plot_view_scatter(path("views"), {"yaw": views["ry"],
                                      "pitch": views["rx"]}, predicted)
    written.append("views")
    picks = np.argsort(views["ry"], kind="stable")[picks]  # spread in yaw
  titles = []
  for i in picks:
    true = (f"true {math.degrees(views['ry'][i]):.0f}, "
            if views is not None else "")
    titles.append(f"#{i}: yaw {true}pred "
                  f"{math.degrees(predicted['yaw'][i]):.0f} deg")
  model = context["model"]
  r = model.renderer
  out = {k: np.asarray(v)
         for k, v in context["predict"](test["image"][picks]).items()}
  gt = test["depth"][picks]
  scores = evaluate_lib.score_batch(
      r, *(tf.constant(a, tf.float32) for a in (
          gt, out["recon_depth"], test["depth"].mean(0))))["model"]
  side, mad = np.asarray(scores["side"]), np.asarray(scores["mad"])
  plot_faces(
      path("faces"),
      {"image": test["image"][picks], "canon_depth": out["canon_depth"],
       "canon_shading": out["canon_diffuse_shading"][..., 0],
       "recon_depth": out["recon_depth"], "recon_mask": out["recon_mask"],
       "gt_depth": gt},
      depth_colour_range(gt, (r.min_depth, r.far_depth)),
      [f"{t}\nSIDE {a * 100:.2f}e-2, MAD {b:.1f} deg"
       for t, a, b in zip(titles, side, mad)])
  predictor = demo.Predictor(context["predict"], r)
  write_turntable(path("turntable"), turntable_frames(
      predictor.render_yaw, test["image"][picks], out))
  return {name: FILES[name] for name in written}


def write_report(model_dir, run, results, files):
  """Writes the report (text, returned) and the run record (JSON).

  Args:
    model_dir: output folder.
    run: the run record: settings, 'notes' and 'stages'.
    results: the last stage's `evaluate.evaluate` output (mean +- std).
    files: {name: file name} of the figures written.
  """
  head = (f"Learning benchmark: {run['config']}, data {run['data_dir']}, "
          f"batch {run['batch_size']}, {run['cpu_count']} CPU cores, budgets "
          f"{', '.join(f'{b:g}' for b in run['budgets_minutes'])} min")
  text = "\n\n".join(
      [head + "".join(f"\nnote: {n}" for n in run["notes"])] +
      [format_stage(s) for s in run["stages"]] +
      [f"Last stage, mean +- std:\n{evaluate_lib.format_table(results)}",
       format_summary(run["stages"]),
       "Files in the model_dir: " + ", ".join(
           [FILES["report"], FILES["json"]] + sorted(files.values()))]) + "\n"
  atomic_files.write_bytes(os.path.join(model_dir, FILES["report"]),
                           text.encode())
  checks = stage_acceptance(run["stages"])
  record = {**run, "files": files, "acceptance": checks,
            "paper_ratio": PAPER_RATIO,
            "acceptance_limits": {str(k): v for k, v in ACCEPTANCE.items()},
            "units": {"side": "log depth (text tables: x1e-2)",
                      "mad": "degrees", "relief": "scene units",
                      "view": "radians", "minutes": "training time"}}
  atomic_files.write_bytes(os.path.join(model_dir, FILES["json"]),
                           json.dumps(json_safe(record), indent=1).encode())
  return text
