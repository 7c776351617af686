r"""Proof that it learns: train on the synthetic data in budget stages and
score depth on the held-out test split against the paper's two baselines.

    python benchmarks/learning.py --budgets=15,30,60,120 \
        --model_dir=runs/learning [--data_dir=data/synthetic] [--binding=...]
    python benchmarks/learning.py --minutes=25 ...   (one budget)

Uses gin_configs/synthetic.gin (CPU-sized networks, no perceptual loss),
generating the dataset first if --data_dir has none. Budgets are cumulative
training minutes: the run trains until the first (`train.max_seconds`),
evaluates the test split (`tf_unsup3d.evaluate`), then continues the same
run (train() resumes from the latest checkpoint) to the next. Per stage it
records minutes, steps, images/s, SIDE / MAD of the model and both
baselines and each method's ratio to the better baseline (paper, Table 2:
SIDE 0.793 / 1.990 = 0.40, MAD 16.51 / 23.26 = 0.71), and diagnostics:
predicted against true yaw and pitch (when `<data_dir>/test/views.csv`
exists: header index,rx,ry,rz,tx,ty,tz,ambient,diffuse,dx,dy, radians, row
i = image i in sorted file order), each loss term's share of the total, and
the depth relief against the ground truth's.

Writes to --model_dir, after every stage (atomically): learning_benchmark.txt
(the report, also printed), learning_benchmark.json (every number),
learning_curve.png (validation SIDE / MAD per epoch), learning_budget.png
(ratios against minutes, with the acceptance limits), learning_views.png
(yaw / pitch scatter), learning_faces.png (test faces: factors, depth and
profiles) and learning_turntable.gif. Needs matplotlib (pip install
-e ".[bench]"). A model_dir holding an earlier run's learning_benchmark.json
with the same leading budgets continues after its last stage.
"""

import json
import os

from absl import app
from absl import flags
import gin
import tf_unsup3d  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TF loads)
import tensorflow as tf

import learning_report as report_lib  # benchmarks/, the script's folder
from tf_unsup3d import checkpoints
from tf_unsup3d import gin_configs
from tf_unsup3d import train as train_lib

_GIN_FILE = flags.DEFINE_string("config", "gin_configs/synthetic.gin",
                                "Training config.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/synthetic",
                                "Synthetic dataset (generated if absent).")
_MODEL_DIR = flags.DEFINE_string("model_dir", "runs/learning_benchmark",
                                 "Output directory (resumed if present).")
_MINUTES = flags.DEFINE_float("minutes", 25.0, "One training budget "
                              "(a shortcut for --budgets=M).")
_BUDGETS = flags.DEFINE_list("budgets", None, "Cumulative training budgets "
                             "in minutes, e.g. 15,30,60,120.")
_EXTRA = flags.DEFINE_multi_string("binding", [], "Extra gin bindings.")
_FACES = flags.DEFINE_integer("faces", 6, "Test faces in the figure and GIF.")


def _budgets():
  if _BUDGETS.value and flags.FLAGS["minutes"].present:
    raise app.UsageError("Give --budgets or --minutes, not both.")
  budgets = ([float(b) for b in _BUDGETS.value] if _BUDGETS.value
             else [_MINUTES.value])
  if any(b <= 0 for b in budgets) or any(
      b >= c for b, c in zip(budgets, budgets[1:])):
    raise app.UsageError(f"Budgets must be positive and increasing: {budgets}")
  return budgets


def _start_run(model_dir, budgets):
  """The run record: settings, and the stages kept from an earlier run."""
  path = os.path.join(model_dir, report_lib.FILES["json"])
  previous = None
  if os.path.isfile(path):
    with open(path) as f:
      previous = json.load(f)
  stages = report_lib.resume_stages(previous, budgets)
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  step = int(latest.rsplit("-", 1)[1]) if latest else 0  # ckpt-<step>
  recorded = stages[-1]["steps"] if stages else 0
  notes = [f"Continued after an earlier run's {len(stages)} stage(s)."
           ] if stages else []
  if step != recorded:
    notes.append(f"{model_dir} held a checkpoint at step {step}"
                 + (f", the kept stages end at step {recorded}" if stages
                    else "") + ": training continues from it, and the "
                 "training time before it is not counted in the minutes.")
  return {"config": _GIN_FILE.value,
          "data_dir": gin.query_parameter("make_dataset.data_dir"),
          "model_dir": model_dir, "bindings": _EXTRA.value,
          "batch_size": gin.query_parameter("train.batch_size"),
          "cpu_count": os.cpu_count(), "budgets_minutes": budgets,
          "notes": notes, "stages": stages}


def _lam_flip_start_epoch():
  try:
    return gin.query_parameter("train.lam_flip_start_epoch")
  except ValueError:  # not bound: train()'s default
    return 0


def main(argv):
  del argv
  budgets = _budgets()
  gin.parse_config_files_and_bindings(
      [gin_configs.resolve(_GIN_FILE.value)],
      [f"make_dataset.data_dir = '{_DATA_DIR.value}'",
       "train.num_epochs = 1000"] + _EXTRA.value)
  model_dir = _MODEL_DIR.value
  run = _start_run(model_dir, budgets)
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  test = None
  for budget in budgets[len(run["stages"]):]:
    trained = run["stages"][-1]["train_minutes"] if run["stages"] else 0.0
    with gin.unlock_config():  # this stage's share; train() resumes the run
      gin.bind_parameter("train.max_seconds", max(budget - trained, 0) * 60)
    summary = train_lib.train(model_dir, strategy)
    # After train(), which generates the synthetic data when it is absent.
    test = test or report_lib.load_test_split(
        gin.query_parameter("make_dataset.data_dir"))
    model = checkpoints.load_model(summary["final_weights"])
    stage, context = report_lib.measure_stage(
        model, test, summary, budget, trained, _lam_flip_start_epoch())
    run["stages"].append(stage)
    files = report_lib.write_figures(model_dir, run["stages"], context, test,
                                     _FACES.value)
    text = report_lib.write_report(model_dir, run, context["results"], files)
    # The whole report at the end; each stage's block as it completes.
    print(text if budget == budgets[-1] else report_lib.format_stage(stage))
  if test is None:
    print(f"Every budget of {budgets} is already recorded in {model_dir}.")


if __name__ == "__main__":
  app.run(main)
