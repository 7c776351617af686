r"""Trains Unsup3D with a custom loop under tf.distribute.

    python -m tf_unsup3d.train --gin_file=gin_configs/synthetic.gin \
        [--gin_param='train.num_epochs = 5'] [--model_dir=runs/synthetic] \
        [--strategy=mirrored|multi_worker|one_device]

Resumes from the newest intact checkpoint in --model_dir, which it locks
against a second run (model_dir/train.lock). Writes TensorBoard logs
(model_dir/train, model_dir/val), checkpoints (model_dir/checkpoints) and
the final weights (model_dir/final.weights.h5).
"""

import fcntl
import functools
import os
import shutil
import time

from absl import app
from absl import flags
from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import configurable
from tf_unsup3d import evaluate as evaluate_lib
from tf_unsup3d import model as model_lib
from tf_unsup3d import summaries
from tf_unsup3d.data import datasets

@gin.configurable(denylist=["output_dir"])
def generate_synthetic(output_dir, num_train=10000, num_val=500, num_test=500,
                       image_size=64, seed=0, max_yaw=30.0, preset=None):
  """Writes the synthetic paired dataset (`tf_unsup3d.data.synthetic`).

  `preset` names one of `synthetic.PRESETS` (e.g. 'wild'); its settings,
  max_yaw included, replace the defaults.
  """
  # Imported here: only the synthetic default needs the generator.
  from tf_unsup3d.data import synthetic  # pylint: disable=g-import-not-at-top
  options = {"max_yaw": max_yaw}
  if preset is not None:
    if preset not in synthetic.PRESETS:
      raise ValueError(f"generate_synthetic.preset {preset!r} is not one of "
                       f"{sorted(synthetic.PRESETS)}.")
    options = dict(synthetic.PRESETS[preset])
  synthetic.generate(output_dir, num_train, num_val, num_test,
                     image_size=image_size, seed=seed, **options)


def make_strategy(name):
  """The tf.distribute strategy for `--strategy`."""
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  raise ValueError(f"Unknown strategy {name!r}.")


def _worker_role(strategy):
  """(is_chief, task id) under a multi-worker strategy; (True, 0) otherwise.

  The chief is the `chief` task or, when the cluster has none, worker 0.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True, 0
  task_type, task_id = resolver.task_type, resolver.task_id or 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  is_chief = task_type == "chief" or (
      task_type == "worker" and task_id == 0 and not has_chief)
  return is_chief, task_id


def output_folder(model_dir, strategy):
  """(is_chief, the folder this worker writes).

  Under MultiWorkerMirroredStrategy every worker runs `train` and takes part
  in each save (saving is collective), but only the chief writes model_dir;
  the others save to a scratch folder, removed at the end, and write no
  summaries.
  """
  is_chief, task_id = _worker_role(strategy)
  return is_chief, (model_dir if is_chief else os.path.join(
      model_dir, "workers", f"worker_{task_id}"))


class ModelDirInUseError(RuntimeError):
  """Another process is training into the same folder."""


class ModelDirLock:
  """Exclusive lock on a training output folder, for `with`.

  `fcntl.flock` on `<folder>/train.lock`: the kernel releases it when the
  holder exits, even when killed, so a crashed run leaves no stale lock.
  The holder writes its PID into the file for the error message. The file
  stays (removing it would race with the next run opening it).
  """

  FILE = "train.lock"

  def __init__(self, folder):
    self.folder = folder
    self.path = os.path.join(folder, self.FILE)
    self._file = None

  def __enter__(self):
    os.makedirs(self.folder, exist_ok=True)
    # Append mode: opening must not erase the PID of a current holder.
    lock_file = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock_file.seek(0)
      holder = lock_file.read().strip() or "unknown"
      lock_file.close()
      raise ModelDirInUseError(
          f"{self.folder} is in use by another training run (PID {holder}, "
          f"lock {self.path}): two runs would mix their checkpoints. Wait "
          "for it to end or stop it, or pass another --model_dir.") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    self._file = lock_file
    return self

  def __exit__(self, *exc_info):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


def _holding_model_dir_lock(train_fn):
  """`train_fn(model_dir, strategy, ...)` run under `ModelDirLock` on the
  folder this worker writes, so that two runs never share one."""

  @functools.wraps(train_fn)
  def locked(model_dir, strategy, **kwargs):
    with ModelDirLock(output_folder(model_dir, strategy)[1]):
      return train_fn(model_dir, strategy, **kwargs)

  return locked


def resume(checkpoint, model, folder):
  """Restores the newest intact checkpoint of `folder` into `checkpoint`.

  Newer unreadable checkpoints (e.g. a truncated data file) are named in a
  warning and skipped; they stay on disk until the checkpoint manager
  rotates them out. Every variable of `model` must be restored
  (`evaluate.restore_model`), and the optimizer and counters must match.

  Returns:
    The prefix resumed from, or None when `folder` has no checkpoint.

  Raises:
    evaluate.CheckpointError: no checkpoint is readable, or the newest
      intact one does not fit the configured model.
  """
  latest, unreadable = evaluate_lib.newest_intact_checkpoint(folder)
  for prefix, problem in unreadable:
    logging.warning("Checkpoint %s is unreadable: %s.", prefix, problem)
  if unreadable and latest is None:
    raise evaluate_lib.CheckpointError(
        f"No checkpoint in {folder} is readable (above). To train from "
        f"scratch, move them aside: mv {folder} {folder}.unreadable")
  if latest is None:
    return None
  evaluate_lib.restore_model(checkpoint, latest,
                             model).assert_existing_objects_matched()
  if unreadable:
    logging.warning("Resuming from %s instead, the newest intact checkpoint.",
                    latest)
  print(f"Resumed from {latest} at step {int(checkpoint.step.numpy())}, "
        f"epoch {int(checkpoint.epoch.numpy())}.")
  return latest


def cosine_schedule(start, end, fraction):
  """start at fraction 0, end at 1, half a cosine between (clipped)."""
  fraction = min(max(float(fraction), 0.0), 1.0)
  return end + (start - end) * 0.5 * (1.0 + np.cos(np.pi * fraction))


def budget_fraction(step, seconds, total_steps, max_steps=None,
                    max_seconds=None):
  """How much of the run's budget is spent, in [0, 1].

  The run stops at whichever of its budgets (all epochs, max_steps,
  max_seconds of this run's training time) runs out first, so the
  fraction is the largest of the three.
  """
  fractions = [step / max(total_steps, 1)]
  if max_steps:
    fractions.append(step / max_steps)
  if max_seconds:
    fractions.append(seconds / max_seconds)
  return min(max(fractions), 1.0)


@_holding_model_dir_lock
@gin.configurable(denylist=["model_dir", "strategy"])
def train(model_dir, strategy, batch_size=64, num_epochs=30,
          learning_rate=1e-4, weight_decay=5e-4, adam_epsilon=1e-8,
          learning_rate_schedule="constant", final_learning_rate_ratio=0.0,
          final_lam_depth_sm=None, lam_flip_start_epoch=0,
          jit_compile=False, mixed_precision=False, keep_checkpoints=3,
          checkpoint_every_steps=1000, summary_every_steps=50,
          image_summary_every_steps=500, max_steps=None, max_seconds=None,
          generate_synthetic_data=False, seed=0):
  """Runs training; returns the final summary dict.

  Holds `ModelDirLock` on model_dir while it runs: a second run into the
  same folder stops with `ModelDirInUseError`. Resumes from the newest
  intact checkpoint (`resume`).

  Args:
    model_dir: output directory (resumed from when it holds checkpoints).
    strategy: a `tf.distribute.Strategy`.
    batch_size: global batch size (64 in the paper).
    num_epochs: passes over the training split.
    learning_rate: Adam step size (1e-4); betas (0.9, 0.999), eps 1e-8.
    weight_decay: L2 weight decay added to the gradient before Adam
      (PyTorch's `weight_decay` semantics, not AdamW), 5e-4.
    adam_epsilon: Adam's epsilon (PyTorch's default 1e-8).
    learning_rate_schedule: 'constant' (the paper) or 'cosine': from
      learning_rate down to final_learning_rate_ratio * learning_rate over
      the run's budget (`budget_fraction`).
    final_learning_rate_ratio: see learning_rate_schedule.
    final_lam_depth_sm: None keeps `Unsup3D.lam_depth_sm` constant (the
      paper); a value moves the weight to it along the same cosine.
    lam_flip_start_epoch: before this epoch the flip terms weigh 1, from it
      on `Unsup3D.lam_flip` (the reference implementation's schedule).
    jit_compile: compile each replica's step with XLA.
    mixed_precision: run the networks in mixed bfloat16 (rendering and
      losses stay float32).
    keep_checkpoints: checkpoints kept on disk.
    checkpoint_every_steps: also save within an epoch this often.
    summary_every_steps, image_summary_every_steps: TensorBoard cadence.
    max_steps: stop after this many steps in total (None: all epochs).
    max_seconds: stop after this much training time in this run (None: no
      limit), e.g. for a fixed-budget benchmark.
    generate_synthetic_data: if a split of the data directory is missing,
      generate the synthetic dataset there first (`synthetic.generate`
      keeps complete splits and finishes interrupted ones).
    seed: shuffling seed.
  """
  if learning_rate_schedule not in ("constant", "cosine"):
    raise ValueError("train.learning_rate_schedule must be 'constant' or "
                     f"'cosine', got {learning_rate_schedule!r}.")
  keras.utils.set_random_seed(seed)  # weights, shuffling and flips
  is_chief, output_dir = output_folder(model_dir, strategy)
  os.makedirs(output_dir, exist_ok=True)
  # The model first: a config it rejects stops the run before the data
  # scan, and so does a checkpoint that does not fit it.
  with strategy.scope():
    # Layers take the global dtype policy when they are created.
    policy = keras.mixed_precision.global_policy()
    if mixed_precision:
      keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
      model = model_lib.Unsup3D()
      model.build((None, model.image_size, model.image_size, 3))
    finally:
      keras.mixed_precision.set_global_policy(policy)
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999,
                                      epsilon=adam_epsilon)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   step=step, epoch=epoch)
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(output_dir, "checkpoints"), keep_checkpoints)
  # Every worker resumes from the chief's checkpoints.
  resume(checkpoint, model, os.path.join(model_dir, "checkpoints"))

  data_dir = gin.query_parameter("make_dataset.data_dir")
  if generate_synthetic_data and not all(
      os.path.isdir(os.path.join(data_dir, split))
      for split in ("train", "val", "test")):
    # The generator keeps complete splits and finishes interrupted ones.
    logging.info("Splits missing in %s: generating the synthetic dataset.",
                 data_dir)
    generate_synthetic(data_dir)

  _, train_info = datasets.make_dataset("train", training=True,
                                        batch_size=batch_size,
                                        check_cache_dir=model_dir)
  steps_per_epoch = datasets.steps_per_epoch(train_info, batch_size)
  replica_batch = batch_size // strategy.num_replicas_in_sync
  if replica_batch * strategy.num_replicas_in_sync != batch_size:
    raise ValueError(f"batch_size {batch_size} does not split evenly over "
                     f"{strategy.num_replicas_in_sync} replicas.")
  # One pipeline per epoch, its order and flips set by (seed, epoch), so the
  # batches a resumed epoch skips are the ones it trained on. `epoch` is the
  # checkpointed counter, read when each epoch starts.
  train_data = datasets.EpochDatasets(
      lambda current: strategy.distribute_datasets_from_function(
          lambda ctx: datasets.make_dataset(
              "train", training=True,
              batch_size=ctx.get_per_replica_batch_size(batch_size),
              check_cache_dir=model_dir, input_context=ctx, seed=seed,
              epoch=current, log_skipped=False)[0]),
      lambda: epoch.numpy())
  val_data, val_info = datasets.make_dataset("val", training=False,
                                             batch_size=batch_size,
                                             check_cache_dir=model_dir)

  variables = model.trainable_variables
  num_replicas = strategy.num_replicas_in_sync

  def replica_step(images, lam_flip, lam_depth_sm):
    context = tf.distribute.get_replica_context()
    reduce = None
    if num_replicas > 1:  # Ratios of sums over the global batch.
      reduce = lambda d: context.all_reduce(tf.distribute.ReduceOp.SUM, d)
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      terms = model.compute_losses(images, outputs, lam_flip,
                                   reduce_denominator=reduce,
                                   lam_depth_sm=lam_depth_sm)
    grads = tape.gradient(terms["total"], variables)
    # Gradients are summed over replicas, so each adds its share of the decay.
    # Weights outside the loss (e.g. the perceptual confidence head when
    # lam_perc = 0) get no gradient and, as in PyTorch's Adam, no update.
    grads = [None if g is None else g + (weight_decay / num_replicas) * v
             for g, v in zip(grads, variables)]
    return terms, grads, outputs["view"], outputs["light"]

  if final_lam_depth_sm is not None and model.lam_depth_sm <= 0:
    raise ValueError("train.final_lam_depth_sm needs Unsup3D.lam_depth_sm "
                     "> 0 (the term is not computed otherwise).")
  total_steps = num_epochs * steps_per_epoch

  def schedules(current_step):
    """(learning rate, depth-prior weight) at this point of the budget."""
    fraction = budget_fraction(current_step, time.perf_counter() - start_time,
                               total_steps, max_steps, max_seconds)
    lr = learning_rate
    if learning_rate_schedule == "cosine":
      lr = cosine_schedule(learning_rate,
                           learning_rate * final_learning_rate_ratio, fraction)
    lam_depth_sm = model.lam_depth_sm
    if final_lam_depth_sm is not None:
      lam_depth_sm = cosine_schedule(model.lam_depth_sm, final_lam_depth_sm,
                                     fraction)
    return lr, lam_depth_sm

  if jit_compile and num_replicas > 1:
    # The cross-replica sum of the loss denominators sits inside the step,
    # and a nested XLA function may not hold a synchronisation point.
    logging.warning("jit_compile is applied with one replica only; running "
                    "%d replicas without XLA.", num_replicas)
  elif jit_compile:
    replica_step = tf.function(replica_step, jit_compile=True)

  def apply_step(batch, lam_flip, lam_depth_sm):
    terms, grads, view, light = replica_step(batch["image"], lam_flip,
                                             lam_depth_sm)
    optimizer.apply_gradients(
        [(g, v) for g, v in zip(grads, variables) if g is not None])
    return terms, view, light

  @tf.function
  def distributed_step(batch, lam_flip, lam_depth_sm):
    terms, view, light = strategy.run(apply_step,
                                      args=(batch, lam_flip, lam_depth_sm))
    terms = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
             for k, v in terms.items()}
    gather = lambda t: strategy.gather(t, axis=0)
    return terms, gather(view), gather(light)

  predict = tf.function(lambda x: model(x, training=False))
  if is_chief:
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
    val_writer = tf.summary.create_file_writer(os.path.join(model_dir, "val"))
  else:
    writer = val_writer = tf.summary.create_noop_writer()
  preview = next(iter(val_data))["image"][:8]
  lam_flip_after = model.lam_flip
  start_time, start_step = time.perf_counter(), int(step.numpy())
  last_terms, val_scores = {}, {}
  lr, lam_depth_sm = schedules(start_step)
  done = max_steps is not None and int(step.numpy()) >= max_steps
  while int(epoch.numpy()) < num_epochs and not done:
    lam_flip = tf.constant(1.0 if int(epoch.numpy()) < lam_flip_start_epoch
                           else lam_flip_after)
    print(f"Epoch {int(epoch.numpy()) + 1}/{num_epochs}")
    progress = keras.utils.Progbar(steps_per_epoch,
                                   stateful_metrics=["loss", "img/s"])
    epoch_start = time.perf_counter()
    # A resumed epoch skips the batches it had already trained on.
    skip = int(step.numpy()) - int(epoch.numpy()) * steps_per_epoch
    for i, batch in enumerate(train_data):
      if i < skip:
        continue
      lr, lam_depth_sm = schedules(int(step.numpy()))
      optimizer.learning_rate.assign(lr)
      terms, view, light = distributed_step(
          batch, lam_flip, tf.constant(lam_depth_sm, tf.float32))
      step.assign_add(1)
      current = int(step.numpy())
      loss = float(terms["total"])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f"Loss became {loss} at step {current}; the last good checkpoint "
            f"is {manager.latest_checkpoint}. Lower train.learning_rate or "
            "check the data.")
      rate = (i + 1 - skip) * batch_size / (time.perf_counter() - epoch_start)
      progress.update(i + 1, [("loss", loss), ("img/s", rate)])
      last_terms = {k: float(v) for k, v in terms.items()}
      if current % summary_every_steps == 0:
        with writer.as_default(step=current):
          for key, value in last_terms.items():
            tf.summary.scalar(f"loss/{key}", value)
          tf.summary.scalar("images_per_second", rate)
          tf.summary.scalar("schedule/learning_rate", lr)
          tf.summary.scalar("schedule/lam_depth_sm", lam_depth_sm)
          tf.summary.histogram("view/rotation_deg", view[:, :3] * 180 / np.pi)
          tf.summary.histogram("view/translation", view[:, 3:])
          tf.summary.histogram("light/ambient_diffuse", light[:, :2])
          tf.summary.histogram("light/direction_dxdy", light[:, 2:])
      if is_chief and current % image_summary_every_steps == 0:
        summaries.write_images(writer, model, predict, preview, current)
      if current % checkpoint_every_steps == 0:
        manager.save(checkpoint_number=current)
      out_of_time = (max_seconds is not None and
                     time.perf_counter() - start_time > max_seconds)
      if (max_steps is not None and current >= max_steps) or out_of_time:
        done = True
        break
    if not done:
      epoch.assign_add(1)
      if is_chief:
        val_scores = validate(model, predict, val_data, val_writer,
                              int(step.numpy()))
      manager.save(checkpoint_number=int(step.numpy()))
  manager.save(checkpoint_number=int(step.numpy()))
  final = os.path.join(model_dir, "final.weights.h5")
  if is_chief:
    summaries.write_images(writer, model, predict, preview, int(step.numpy()))
    tmp = os.path.join(model_dir, "final.tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, final)
  else:
    shutil.rmtree(output_dir, ignore_errors=True)
  elapsed = time.perf_counter() - start_time
  trained = int(step.numpy()) - start_step
  summary = {
      "steps": int(step.numpy()), "epochs": int(epoch.numpy()), "seconds": elapsed,
      "images_per_second": trained * batch_size / max(elapsed, 1e-9),
      "skipped_files": train_info["num_skipped"] + val_info["num_skipped"],
      "final_weights": final, "learning_rate": float(lr),
      "lam_depth_sm": float(lam_depth_sm),
      **{f"loss/{k}": v for k, v in last_terms.items()},
      **val_scores}
  print("\nTraining summary")
  for key, value in summary.items():
    print(f"  {key:24s} {value:.4f}" if isinstance(value, float)
          else f"  {key:24s} {value}")
  if train_info["skipped"] or val_info["skipped"]:
    print("  unreadable files skipped: " +
          ", ".join(train_info["skipped"] + val_info["skipped"]))
  return summary


def validate(model, predict, dataset, writer, step):
  """Mean losses on the val split, plus SIDE and MAD when it has depth."""
  totals, count = {}, 0
  for batch in dataset:
    outputs = predict(batch["image"])
    terms = model.compute_losses(batch["image"], outputs)
    n = int(batch["image"].shape[0])
    for key, value in terms.items():
      totals[key] = totals.get(key, 0.0) + float(value) * n
    count += n
  scores = {f"val/{k}": v / count for k, v in totals.items()}
  if "depth" in dataset.element_spec:
    results = evaluate_lib.evaluate(model, dataset, predict)
    for method, r in results.items():
      scores[f"val/side_{method}"] = float(r["side"].mean())
      scores[f"val/mad_{method}"] = float(r["mad"].mean())
      scores[f"val/mad_acos_{method}"] = float(r["mad_acos"].mean())
  with writer.as_default(step=step):
    for key, value in scores.items():
      tf.summary.scalar(key, value)
  print("  " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
  return scores


def define_flags():
  """Command-line flags of the training CLI (paths and run control only)."""
  configurable.gin_flags()
  flags.DEFINE_string("model_dir", None, "Checkpoints and logs; default "
                      "runs/<name of the first gin file>.")
  flags.DEFINE_enum(
      "strategy", "mirrored", ["mirrored", "multi_worker", "one_device"],
      "mirrored: all local GPUs (else the CPU); multi_worker: "
      "MultiWorkerMirroredStrategy from TF_CONFIG; one_device: first device.")


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.gin_file:
    raise app.UsageError("Give a config: --gin_file=gin_configs/<name>.gin")
  configurable.parse_gin_flags()
  model_dir = args.model_dir or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.gin_file[0]))[0])
  try:
    train(model_dir, make_strategy(args.strategy))
  except (datasets.DataError, FileNotFoundError) as e:
    # Missing data or weights: the message says what to get and where.
    raise SystemExit(f"train: {e}") from None


if __name__ == "__main__":
  define_flags()
  app.run(main)
