r"""Proof that it learns: train on the synthetic data for a fixed budget, then
score depth on the held-out test split against the paper's two baselines.

    python benchmarks/learning.py --minutes=25 --model_dir=runs/learning

Uses gin_configs/synthetic.gin (CPU-sized networks, no perceptual loss),
generating the dataset first if --data_dir has none. Prints the SIDE / MAD
table of `tf_unsup3d.evaluate` and each method's ratio to the better
baseline; the paper's Table 2 ratios (model / better baseline) are SIDE
0.793 / 1.990 = 0.40 and MAD 16.51 / 23.26 = 0.71.
"""

import os
import time

from absl import app
from absl import flags
import gin
import tensorflow as tf

from tf_unsup3d import evaluate as evaluate_lib
from tf_unsup3d import train as train_lib
from tf_unsup3d.data import datasets

_GIN_FILE = flags.DEFINE_string("config", "gin_configs/synthetic.gin",
                                "Training config.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/synthetic",
                                "Synthetic dataset (generated if absent).")
_MODEL_DIR = flags.DEFINE_string("model_dir", "runs/learning_benchmark",
                                 "Output directory (resumed if present).")
_MINUTES = flags.DEFINE_float("minutes", 25.0, "Training budget.")
_EXTRA = flags.DEFINE_multi_string("binding", [], "Extra gin bindings.")


def main(argv):
  del argv
  gin.parse_config_files_and_bindings(
      [_GIN_FILE.value],
      [f"make_dataset.data_dir = '{_DATA_DIR.value}'",
       f"train.max_seconds = {_MINUTES.value * 60}",
       "train.num_epochs = 1000"] + _EXTRA.value)
  start = time.perf_counter()
  summary = train_lib.train(_MODEL_DIR.value,
                            tf.distribute.OneDeviceStrategy("/cpu:0"))
  train_minutes = (time.perf_counter() - start) / 60
  model = evaluate_lib.load_model(
      os.path.join(_MODEL_DIR.value, "final.weights.h5"))
  dataset, _ = datasets.make_dataset("test", training=False, batch_size=32)
  results = evaluate_lib.evaluate(model, dataset)
  table = evaluate_lib.format_table(results)
  best = {key: min(results[m][key].mean() for m in results if m != "model")
          for key in ("side", "mad")}
  ratios = (f"model / better baseline: SIDE "
            f"{results['model']['side'].mean() / best['side']:.2f}, MAD "
            f"{results['model']['mad'].mean() / best['mad']:.2f} "
            "(paper: 0.40, 0.71)")
  report = (f"{summary['steps']} steps of batch "
            f"{gin.query_parameter('train.batch_size')} in {train_minutes:.1f} "
            f"min on {os.cpu_count()} CPU cores; "
            f"{len(results['model']['side'])} test images\n{table}\n{ratios}")
  print(report)
  with open(os.path.join(_MODEL_DIR.value, "learning_benchmark.txt"), "w") as f:
    f.write(report + "\n")


if __name__ == "__main__":
  app.run(main)
