r"""TFLite accuracy and SavedModel / TFLite latency, for README's tables.

    python -m tf_unsup3d.export.measure --gin_file=gin_configs/synthetic.gin \
        [--checkpoint=runs/synthetic] [--runs=20] [--seeds=3]

Exports the model (random weights without --checkpoint) to a temporary
SavedModel and to every TFLite variant, prints each variant's max abs
difference to the SavedModel per output (max over --seeds random-weight
models and two kinds of images when there is no checkpoint), and the median
latency of --runs batch-1 calls of each, after one warm-up call.
"""

import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d.export import export_savedmodel
from tf_unsup3d.export import export_tflite


def median_latency_ms(fn, runs):
  fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.median(times))


def define_flags():
  configurable.gin_flags()
  checkpoints.define_checkpoint_flag(without="random weights")
  flags.DEFINE_integer("runs", 20, "Timed calls per measurement.")
  flags.DEFINE_integer("seeds", 3, "Random-weight models (no checkpoint).")
  flags.DEFINE_integer("num_threads", None, "LiteRT interpreter threads.")


def main(argv):
  del argv
  configurable.parse_gin_flags(skip_unknown=configurable.TRAINING_PIPELINE)
  args = flags.FLAGS
  images = None
  worst = {q: dict.fromkeys(export_tflite.QUANTITIES, 0.0)
           for q in export_tflite.QUANTIZATIONS}
  seeds = [0] if args.checkpoint else list(range(args.seeds))
  for seed in seeds:
    tf.keras.utils.set_random_seed(seed)
    if args.checkpoint:
      model = checkpoints.load_model(args.checkpoint)
    else:
      model = checkpoints.build_model(vgg_weights=None)
    if images is None:  # S x S, S the config's image_size
      s = model.image_size
      images = np.concatenate([
          export_tflite.validation_images(s, count=2),
          np.random.default_rng(0).uniform(size=(2, s, s, 3))]).astype(
              np.float32)
    with tempfile.TemporaryDirectory() as tmp:
      path = export_savedmodel.export_saved_model(model, tmp)
      serving = tf.saved_model.load(path).signatures["serving_default"]
      expected = {k: v.numpy() for k, v in serving(images=images).items()}
      one = tf.constant(images[:1])
      if seed == seeds[0]:
        print(f"SavedModel serving_default, batch 1: "
              f"{median_latency_ms(lambda: serving(images=one), args.runs):.1f}"
              " ms (median)")
      for quantization in export_tflite.QUANTIZATIONS:
        tflite = export_tflite.convert(
            export_tflite.inference_model(model), quantization)
        errors = export_tflite.output_errors(
            export_tflite.tflite_predict(tflite, images, args.num_threads),
            expected, model.max_depth - model.min_depth)
        for key, error in errors.items():
          worst[quantization][key] = max(worst[quantization][key], error)
        if seed == seeds[0]:
          from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
          runner = Interpreter(model_content=tflite,
                               num_threads=args.num_threads
                               ).get_signature_runner()
          ms = median_latency_ms(lambda: runner(images=images[:1]), args.runs)
          print(f"TFLite {quantization}: {len(tflite) / 1e6:.2f} MB, batch 1: "
                f"{ms:.2f} ms (median)")
  for quantization, errors in worst.items():
    print(f"max error against the SavedModel, {quantization}:")
    print(export_tflite.format_errors(errors, quantization))


if __name__ == "__main__":
  define_flags()
  app.run(main)
