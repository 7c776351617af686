r"""Trains Unsup3D with a custom loop under tf.distribute.

    python -m tf_unsup3d.train --gin_file=gin_configs/synthetic.gin \
        [--gin_param='train.num_epochs = 5'] [--model_dir=runs/synthetic] \
        [--strategy=auto|mirrored|multi_worker|one_device]

Resumes from the newest intact checkpoint in --model_dir, which it locks
against a second run (model_dir/train.lock). Writes TensorBoard logs
(model_dir/train, model_dir/val), checkpoints (model_dir/checkpoints) and
the final weights (model_dir/final.weights.h5).
"""

import dataclasses
import fcntl
import functools
import os
import shutil
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d import evaluate as evaluate_lib
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
  """The tf.distribute strategy for `--strategy`.

  'auto' mirrors over the local GPUs when there are several, else runs on
  the one device (the GPU, else the CPU): a one-replica MirroredStrategy
  costs a CPU step about a sixth more (`benchmarks/step_split.py
  --strategy_compare`).
  """
  if name == "auto":
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
      return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
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
  (`checkpoints.restore_model`), and the optimizer and counters must match.

  Returns:
    The prefix resumed from, or None when `folder` has no checkpoint.

  Raises:
    checkpoints.CheckpointError: no checkpoint is readable, or the newest
      intact one does not fit the configured model (its variables, or
      whether the view network has an Adam of its own).
  """
  latest, unreadable = checkpoints.newest_intact_checkpoint(folder)
  for prefix, problem in unreadable:
    logging.warning("Checkpoint %s is unreadable: %s.", prefix, problem)
  if unreadable and latest is None:
    raise checkpoints.CheckpointError(
        f"No checkpoint in {folder} is readable (above). To train from "
        f"scratch, move them aside: mv {folder} {folder}.unreadable")
  if latest is None:
    return None
  _check_view_optimizer(checkpoint, latest)
  checkpoints.restore_model(checkpoint, latest,
                            model).assert_existing_objects_matched()
  if unreadable:
    logging.warning("Resuming from %s instead, the newest intact checkpoint.",
                    latest)
  print(f"Resumed from {latest} at step {int(checkpoint.step.numpy())}, "
        f"epoch {int(checkpoint.epoch.numpy())}.")
  return latest


def _check_view_optimizer(checkpoint, path):
  """Raises CheckpointError when `path` and `checkpoint` disagree on
  whether the view network has an Adam of its own: the shared Adam's slots
  would not line up with the variables they belong to."""
  saved = any(name.startswith("view_optimizer/") for name in
              tf.train.load_checkpoint(path).get_variable_to_shape_map())
  configured = getattr(checkpoint, "view_optimizer", None) is not None
  if saved == configured:
    return
  if saved:
    problem, fix = ("gives the view network an Adam of its own "
                    "(train.view_learning_rate) and this run does not",
                    "train.view_learning_rate to that run's step size (its "
                    "config's value)")
  else:
    problem, fix = ("trains every network with one Adam and this run gives "
                    "the view network its own (train.view_learning_rate)",
                    "train.view_learning_rate = None")
  raise checkpoints.CheckpointError(
      f"{path} {problem}. To resume it, bind {fix}; or train from scratch in "
      "another --model_dir.")


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


class Budget:
  """What a run may spend: its epochs, max_steps in total and max_seconds of
  its own time, counted from the budget's creation on `clock`.

  Args:
    total_steps: steps of all epochs, >= 0.
    max_steps: stop at this step (counted over resumed runs too), or None.
    max_seconds: stop once this run has trained this long, or None.
    clock: seconds, monotonic (`time.perf_counter`).
  """

  def __init__(self, total_steps, max_steps=None, max_seconds=None,
               clock=time.perf_counter):
    self.total_steps = total_steps
    self.max_steps = max_steps
    self.max_seconds = max_seconds
    self._clock = clock
    self._start = clock()

  def seconds(self):
    """Seconds since the budget was created."""
    return self._clock() - self._start

  def fraction(self, step):
    """`budget_fraction` at `step`, now: in [0, 1]."""
    return budget_fraction(step, self.seconds(), self.total_steps,
                           self.max_steps, self.max_seconds)

  def steps_spent(self, step):
    """Whether `step` has reached max_steps."""
    return self.max_steps is not None and step >= self.max_steps

  def spent(self, step):
    """Whether `step` has reached max_steps or the time is over."""
    out_of_time = (self.max_seconds is not None and
                   self.seconds() > self.max_seconds)
    return self.steps_spent(step) or out_of_time


def batches_to_skip(step, epoch, steps_per_epoch):
  """Batches of epoch `epoch` (0-based) that the first `step` steps trained.

  A run resumed mid-epoch skips them: each epoch's pipeline replays the same
  batches (`datasets.EpochDatasets`). In [0, steps_per_epoch].
  """
  return min(max(step - epoch * steps_per_epoch, 0), steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Schedules:
  """The learning rate and loss weights along a run.

  The fields are `train`'s arguments of the same names, and `Unsup3D`'s
  lam_depth_sm (>= 0) and lam_flip.
  """

  learning_rate: float
  learning_rate_schedule: str = "constant"
  final_learning_rate_ratio: float = 0.0
  learning_rate_drop_step: Optional[int] = None
  lam_depth_sm: float = 0.0
  final_lam_depth_sm: Optional[float] = None
  lam_flip: float = 0.5
  lam_flip_start_epoch: int = 0
  initial_lam_flip: Optional[float] = None
  lam_flip_warmup_steps: int = 0
  lam_rerender_view: float = 0.0
  rerender_view_start_step: int = 0
  rerender_view_ramp_steps: int = 0
  lam_depth_deviation: float = 0.0
  depth_deviation_start_step: int = 0
  depth_deviation_ramp_steps: int = 0
  final_lam_depth_deviation: Optional[float] = None
  depth_deviation_final_step: int = 0

  def __post_init__(self):
    if self.learning_rate_schedule not in ("constant", "cosine", "step"):
      raise ValueError("train.learning_rate_schedule must be 'constant', "
                       f"'cosine' or 'step', got "
                       f"{self.learning_rate_schedule!r}.")
    if self.learning_rate_schedule == "step" and not (
        self.learning_rate_drop_step and self.learning_rate_drop_step > 0):
      raise ValueError("train.learning_rate_schedule = 'step' needs "
                       "train.learning_rate_drop_step > 0, got "
                       f"{self.learning_rate_drop_step}.")
    if self.final_lam_depth_sm is not None and self.lam_depth_sm <= 0:
      raise ValueError("train.final_lam_depth_sm needs Unsup3D.lam_depth_sm "
                       "> 0 (the term is not computed otherwise).")
    if self.initial_lam_flip is not None and (
        self.initial_lam_flip < 0 or self.lam_flip_warmup_steps <= 0):
      raise ValueError(
          "train.initial_lam_flip needs a weight >= 0 and "
          "train.lam_flip_warmup_steps > 0, got "
          f"{self.initial_lam_flip} and {self.lam_flip_warmup_steps}.")
    for term in ("rerender_view", "depth_deviation"):
      start = getattr(self, f"{term}_start_step")
      ramp = getattr(self, f"{term}_ramp_steps")
      if start < 0 or ramp < 0:
        raise ValueError(
            f"train.{term}_start_step and train.{term}_ramp_steps must be "
            f">= 0, got {start} and {ramp}.")
    if self.final_lam_depth_deviation is not None and not (
        self.final_lam_depth_deviation >= 0 and
        self.depth_deviation_final_step > self.depth_deviation_start_step +
        self.depth_deviation_ramp_steps):
      raise ValueError(
          "train.final_lam_depth_deviation needs a weight >= 0 and "
          "train.depth_deviation_final_step after the first ramp "
          "(depth_deviation_start_step + depth_deviation_ramp_steps = "
          f"{self.depth_deviation_start_step + self.depth_deviation_ramp_steps}"
          f"), got {self.final_lam_depth_deviation} and "
          f"{self.depth_deviation_final_step}.")

  def at(self, fraction, step=0):
    """(learning rate, depth-prior weight) with `fraction` of the budget
    spent, fraction in [0, 1], at `step` (over resumed runs too)."""
    learning_rate = self.learning_rate
    if self.learning_rate_schedule == "cosine":
      learning_rate = cosine_schedule(
          self.learning_rate,
          self.learning_rate * self.final_learning_rate_ratio, fraction)
    elif (self.learning_rate_schedule == "step" and
          step >= self.learning_rate_drop_step):
      learning_rate = self.learning_rate * self.final_learning_rate_ratio
    lam_depth_sm = self.lam_depth_sm
    if self.final_lam_depth_sm is not None:
      lam_depth_sm = cosine_schedule(self.lam_depth_sm,
                                     self.final_lam_depth_sm, fraction)
    return learning_rate, lam_depth_sm

  def lam_flip_at(self, epoch, step=0):
    """The flip terms' weight at `step` (over resumed runs too) of epoch
    `epoch` (0-based).

    With initial_lam_flip the weight starts there and eases along half a
    cosine to lam_flip over lam_flip_warmup_steps steps; otherwise it is 1
    before lam_flip_start_epoch and lam_flip from it on.
    """
    if self.initial_lam_flip is not None:
      return float(cosine_schedule(self.initial_lam_flip, self.lam_flip,
                                   step / self.lam_flip_warmup_steps))
    return 1.0 if epoch < self.lam_flip_start_epoch else self.lam_flip

  def lam_rerender_view_at(self, step):
    """The re-rendered view term's weight at `step` (over resumed runs),
    eased in (`eased_in`) from rerender_view_start_step."""
    return eased_in(self.lam_rerender_view, self.rerender_view_start_step,
                    self.rerender_view_ramp_steps, step)

  def lam_depth_deviation_at(self, step):
    """The depth deviation term's weight at `step` (over resumed runs),
    eased in (`eased_in`) from depth_deviation_start_step and, with
    final_lam_depth_deviation, eased on to it from
    depth_deviation_final_step over the same number of steps."""
    weight = eased_in(self.lam_depth_deviation,
                      self.depth_deviation_start_step,
                      self.depth_deviation_ramp_steps, step)
    if self.final_lam_depth_deviation is not None:
      weight += eased_in(
          self.final_lam_depth_deviation - self.lam_depth_deviation,
          self.depth_deviation_final_step, self.depth_deviation_ramp_steps,
          step)
    return weight


def eased_in(weight, start_step, ramp_steps, step):
  """0 before start_step, then rising along half a cosine to `weight` over
  ramp_steps steps (at once with ramp_steps 0); a float."""
  if step < start_step:
    return 0.0
  if ramp_steps == 0:
    return float(weight)
  return float(cosine_schedule(0.0, weight,
                               min((step - start_step) / ramp_steps, 1.0)))


def cpu_has_fast_bfloat16(cpuinfo="/proc/cpuinfo"):
  """Whether this CPU has bfloat16 arithmetic (AVX512_BF16 or AMX-BF16).

  Without it oneDNN emulates bfloat16 convolutions, 3-5x slower than
  float32 (README, "Training"). Returns None where `cpuinfo` is unreadable
  (not Linux).
  """
  try:
    with open(cpuinfo) as f:
      flags_line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return None
  return bool({"avx512_bf16", "amx_bf16"} & set(flags_line.split()))


def _view_variable_ids(model):
  """ids of the view network's trainable variables (its own Adam's)."""
  return {id(v) for v in model.net_view.trainable_variables}


def build_model_and_optimizer(strategy, learning_rate=1e-4, adam_epsilon=1e-8,
                              mixed_precision=False, view_learning_rate=None):
  """The training state, created in `strategy`'s scope.

  Args:
    strategy: a `tf.distribute.Strategy`.
    learning_rate: Adam's initial step size, > 0.
    adam_epsilon: Adam's epsilon, > 0; betas are (0.9, 0.999).
    mixed_precision: create the networks in mixed bfloat16.
    view_learning_rate: None, or the step size (> 0) of a second Adam that
      alone trains the view network.

  Returns:
    A `tf.train.Checkpoint` of `model` (built `Unsup3D`), `optimizer` (Adam,
    built on the model's trainable variables, less the view network's with
    view_learning_rate), with view_learning_rate `view_optimizer` (Adam on
    the view network's), and the int64 counters `step` (steps trained) and
    `epoch` (epochs finished), both 0.
  """
  if view_learning_rate is not None and not view_learning_rate > 0:
    raise ValueError("train.view_learning_rate must be > 0 (or None: the "
                     "view network shares train.learning_rate), got "
                     f"{view_learning_rate}.")
  with strategy.scope():
    if (mixed_precision and not tf.config.list_physical_devices("GPU")
        and cpu_has_fast_bfloat16() is False):
      logging.warning(
          "train.mixed_precision = True on a CPU without AVX512_BF16 or "
          "AMX-BF16: its bfloat16 convolutions are emulated and the step "
          "runs slower than in float32; set train.mixed_precision = False "
          "on this machine.")
    model = checkpoints.build_model(mixed_precision)
    adam = lambda rate: keras.optimizers.Adam(
        rate, beta_1=0.9, beta_2=0.999, epsilon=adam_epsilon)
    optimizers = {"optimizer": adam(learning_rate)}
    if view_learning_rate is None:
      optimizers["optimizer"].build(model.trainable_variables)
    else:
      view_ids = _view_variable_ids(model)
      optimizers["optimizer"].build(
          [v for v in model.trainable_variables if id(v) not in view_ids])
      optimizers["view_optimizer"] = adam(view_learning_rate)
      optimizers["view_optimizer"].build(model.net_view.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  return tf.train.Checkpoint(model=model, step=step, epoch=epoch,
                             **optimizers)


def restore(checkpoint, model_dir, output_dir, keep_checkpoints=3):
  """Resumes `checkpoint` from model_dir/checkpoints (`resume`).

  Every worker resumes from the chief's checkpoints (model_dir) and saves
  to its own output_dir (`output_folder`).

  Returns:
    The `tf.train.CheckpointManager` of output_dir/checkpoints, keeping the
    newest `keep_checkpoints`.
  """
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(output_dir, "checkpoints"), keep_checkpoints)
  resume(checkpoint, checkpoint.model, os.path.join(model_dir, "checkpoints"))
  return manager


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The data of a run (`prepare_data`).

  Attributes:
    train: iterable, one distributed pipeline of the train split per
      iteration, of the epoch the `epoch` counter names then.
    val: the val split's batches (global batch size).
    steps_per_epoch: whole global batches in one epoch, >= 1.
    train_info, val_info: `make_dataset`'s info of each split.
  """

  train: datasets.EpochDatasets
  val: tf.data.Dataset
  steps_per_epoch: int
  train_info: dict
  val_info: dict


def prepare_data(strategy, model_dir, current_epoch, batch_size=64, seed=0,
                 generate_synthetic_data=False):
  """Scans the train and val splits of gin's `make_dataset.data_dir`.

  Args:
    strategy: the `tf.distribute.Strategy` the train batches are split by.
    model_dir: the run's folder (`make_dataset`'s check_cache_dir).
    current_epoch: () -> the epoch a train pipeline starting now belongs to.
    batch_size: global batch size, a multiple of the replica count.
    seed: shuffling and flip seed; with the epoch it fixes an epoch's order.
    generate_synthetic_data: first generate the synthetic dataset into the
      data directory when one of its splits is missing.

  Returns:
    `TrainData`.
  """
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
  # batches a resumed epoch skips are the ones it trained on.
  train_data = datasets.EpochDatasets(
      lambda epoch: strategy.distribute_datasets_from_function(
          lambda ctx: datasets.make_dataset(
              "train", training=True,
              batch_size=ctx.get_per_replica_batch_size(batch_size),
              check_cache_dir=model_dir, input_context=ctx, seed=seed,
              epoch=epoch, log_skipped=False)[0]),
      current_epoch)
  val_data, val_info = datasets.make_dataset("val", training=False,
                                             batch_size=batch_size,
                                             check_cache_dir=model_dir)
  return TrainData(train_data, val_data, steps_per_epoch, train_info,
                   val_info)


def make_train_step(model, optimizer, strategy, weight_decay=5e-4,
                    jit_compile=False, view_optimizer=None):
  """One optimiser step on a distributed batch, as a `tf.function`.

  Args:
    model: a built `Unsup3D`, created in `strategy`'s scope.
    optimizer: a Keras optimizer built on `model.trainable_variables`; its
      learning rate is read at each step.
    strategy: the `tf.distribute.Strategy` the batches are distributed by.
    weight_decay: L2 weight decay added to the gradient before the update
      (PyTorch's Adam `weight_decay`, not AdamW), >= 0.
    jit_compile: compile each replica's forward and backward pass with XLA
      (with more than one replica a warning says it is not applied).
    view_optimizer: None, or a Keras optimizer built on the view network's
      trainable variables, which it then updates instead of `optimizer`.

  Returns:
    `step(batch, lam_flip, lam_depth_sm, lam_rerender_view,
    lam_depth_deviation) -> (terms, view, light)`: `batch` a distributed
    {'image': `[B, S, S, 3]` in [0, 1], ...}, the loss weights float32
    scalars. `terms` maps each loss
    term to its value on the global batch (ratios of sums over the
    replicas), `view` `[B, 6]` and `light` `[B, 4]` are the predictions on
    the global batch.
  """
  variables = model.trainable_variables
  num_replicas = strategy.num_replicas_in_sync

  def replica_step(images, lam_flip, lam_depth_sm, lam_rerender_view,
                   lam_depth_deviation):
    context = tf.distribute.get_replica_context()
    reduce = None
    if num_replicas > 1:  # Ratios of sums over the global batch.
      reduce = lambda d: context.all_reduce(tf.distribute.ReduceOp.SUM, d)
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      terms = model.compute_losses(images, outputs, lam_flip,
                                   reduce_denominator=reduce,
                                   lam_depth_sm=lam_depth_sm,
                                   lam_rerender_view=lam_rerender_view,
                                   lam_depth_deviation=lam_depth_deviation)
    grads = tape.gradient(terms["total"], variables)
    # Gradients are summed over replicas, so each adds its share of the decay.
    # Weights outside the loss (e.g. the perceptual confidence head when
    # lam_perc = 0) get no gradient and, as in PyTorch's Adam, no update.
    grads = [None if g is None else g + (weight_decay / num_replicas) * v
             for g, v in zip(grads, variables)]
    return terms, grads, outputs["view"], outputs["light"]

  if jit_compile and num_replicas > 1:
    # The cross-replica sum of the loss denominators sits inside the step,
    # and a nested XLA function may not hold a synchronisation point.
    logging.warning("jit_compile is applied with one replica only; running "
                    "%d replicas without XLA.", num_replicas)
  elif jit_compile:
    replica_step = tf.function(replica_step, jit_compile=True)

  view_ids = (_view_variable_ids(model) if view_optimizer is not None
              else set())

  def apply_step(batch, *weights):
    terms, grads, view, light = replica_step(batch["image"], *weights)
    updates = [(g, v) for g, v in zip(grads, variables) if g is not None]
    optimizer.apply_gradients(
        [(g, v) for g, v in updates if id(v) not in view_ids])
    if view_optimizer is not None:
      view_optimizer.apply_gradients(
          [(g, v) for g, v in updates if id(v) in view_ids])
    return terms, view, light

  @tf.function
  def distributed_step(batch, *weights):
    terms, view, light = strategy.run(apply_step, args=(batch, *weights))
    terms = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
             for k, v in terms.items()}
    gather = lambda t: strategy.gather(t, axis=0)
    return terms, gather(view), gather(light)

  return distributed_step


class TensorBoardLogs:
  """A run's TensorBoard logs: model_dir/train and model_dir/val.

  Only the chief writes them: on the other workers the writers are no-ops
  and images and validation are skipped.

  Args:
    model: the `Unsup3D` being trained.
    model_dir: the run's folder.
    is_chief: whether this worker writes model_dir.
    val_data: the val split's batches; the first 8 images of the first
      batch are the factor images' inputs.
    every_steps: losses, schedules and the view and light distributions at
      every this many steps.
    image_every_steps: factor images (`summaries.write_images`) at every
      this many steps.
  """

  def __init__(self, model, model_dir, is_chief, val_data, every_steps=50,
               image_every_steps=500):
    self.model = model
    self.is_chief = is_chief
    self.every_steps = every_steps
    self.image_every_steps = image_every_steps
    self.predict = tf.function(lambda x: model(x, training=False))
    if is_chief:
      self.writer = tf.summary.create_file_writer(
          os.path.join(model_dir, "train"))
      self.val_writer = tf.summary.create_file_writer(
          os.path.join(model_dir, "val"))
    else:
      self.writer = self.val_writer = tf.summary.create_noop_writer()
    self.preview = next(iter(val_data))["image"][:8]
    self._images_step = None  # the step of the newest factor images

  def write_step(self, step, terms, rate, learning_rate, lam_depth_sm, view,
                 light, lam_flip=None, lam_rerender_view=None,
                 lam_depth_deviation=None):
    """The summaries of training step `step` that fall due.

    Args:
      step: steps trained, >= 1.
      terms: {loss term: float} of the step.
      rate: training images per second.
      learning_rate, lam_depth_sm: the step's schedule values.
      view: `[B, 6]` (rx, ry, rz in radians, tx, ty, tz).
      light: `[B, 4]` (ambient, diffuse, dx, dy).
      lam_flip: the step's flip-term weight, or None.
      lam_rerender_view: the step's re-rendered view weight, or None.
      lam_depth_deviation: the step's depth deviation weight, or None.
    """
    if step % self.every_steps == 0:
      with self.writer.as_default(step=step):
        for key, value in terms.items():
          tf.summary.scalar(f"loss/{key}", value)
        tf.summary.scalar("images_per_second", rate)
        tf.summary.scalar("schedule/learning_rate", learning_rate)
        tf.summary.scalar("schedule/lam_depth_sm", lam_depth_sm)
        if lam_flip is not None:
          tf.summary.scalar("schedule/lam_flip", lam_flip)
        if lam_rerender_view is not None:
          tf.summary.scalar("schedule/lam_rerender_view", lam_rerender_view)
        if lam_depth_deviation is not None:
          tf.summary.scalar("schedule/lam_depth_deviation",
                            lam_depth_deviation)
        tf.summary.histogram("view/rotation_deg", view[:, :3] * 180 / np.pi)
        tf.summary.histogram("view/translation", view[:, 3:])
        tf.summary.histogram("light/ambient_diffuse", light[:, :2])
        tf.summary.histogram("light/direction_dxdy", light[:, 2:])
    if step % self.image_every_steps == 0:
      self.write_images(step)

  def write_images(self, step):
    """The factor images of the preview at `step` (on the chief), unless
    they were just written at that step."""
    if self.is_chief and step != self._images_step:
      summaries.write_images(self.writer, self.model, self.predict,
                             self.preview, step)
      self._images_step = step

  def validate(self, val_data, step):
    """`validate` at `step` on the chief, into the val log; {} elsewhere."""
    if not self.is_chief:
      return {}
    return validate(self.model, self.predict, val_data, self.val_writer, step)


class Runner:
  """Trains epoch after epoch until `num_epochs` or the budget runs out.

  A checkpoint every `checkpoint_every_steps` steps and after each epoch,
  the step summaries as they fall due, validation after each epoch. Keeps
  what the run's summary reports: the step it started at, the last step's
  losses and schedule values, the last validation scores.

  Args:
    checkpoint: `build_model_and_optimizer`'s state, resumed or new.
    manager: its `tf.train.CheckpointManager` (`restore`).
    data: `TrainData`; `data.train` follows `checkpoint.epoch`.
    train_step: `make_train_step`'s step.
    schedules: `Schedules`.
    budget: `Budget`, its clock started.
    logs: `TensorBoardLogs`.
    num_epochs: epochs in all, counted over resumed runs too.
    batch_size: global batch size.
    checkpoint_every_steps: save within an epoch at every this many steps.
  """

  def __init__(self, checkpoint, manager, data, train_step, schedules, budget,
               logs, *, num_epochs, batch_size, checkpoint_every_steps):
    self.checkpoint = checkpoint
    self.manager = manager
    self.data = data
    self.train_step = train_step
    self.schedules = schedules
    self.budget = budget
    self.logs = logs
    self.num_epochs = num_epochs
    self.batch_size = batch_size
    self.checkpoint_every_steps = checkpoint_every_steps
    self.start_step = self.step
    self.learning_rate, self.lam_depth_sm = schedules.at(
        budget.fraction(self.start_step), self.start_step)
    self.lam_flip = schedules.lam_flip_at(self.epoch, self.start_step)
    self.lam_rerender_view = schedules.lam_rerender_view_at(self.start_step)
    self.lam_depth_deviation = schedules.lam_depth_deviation_at(
        self.start_step)
    self.last_terms, self.val_scores = {}, {}
    self._saved = None  # (step, epoch) of this run's newest checkpoint

  @property
  def step(self):
    """Steps trained, over resumed runs too."""
    return int(self.checkpoint.step.numpy())

  @property
  def epoch(self):
    """Epochs finished, over resumed runs too."""
    return int(self.checkpoint.epoch.numpy())

  def run(self):
    """Trains until every epoch is finished or the budget is spent."""
    while (self.epoch < self.num_epochs and
           not self.budget.steps_spent(self.step)):
      if not self.run_one_epoch():
        return
      self.checkpoint.epoch.assign_add(1)
      self.val_scores = self.logs.validate(self.data.val, self.step)
      self.save()

  def run_one_epoch(self):
    """Trains the rest of the current epoch; False if the budget ran out."""
    print(f"Epoch {self.epoch + 1}/{self.num_epochs}")
    progress = keras.utils.Progbar(self.data.steps_per_epoch,
                                   stateful_metrics=["loss", "img/s"])
    start = time.perf_counter()
    skip = batches_to_skip(self.step, self.epoch, self.data.steps_per_epoch)
    for i, batch in enumerate(self.data.train):
      if i < skip:
        continue
      view, light = self.run_one_step(batch)
      rate = (i + 1 - skip) * self.batch_size / (time.perf_counter() - start)
      progress.update(i + 1, [("loss", self.last_terms["total"]),
                              ("img/s", rate)])
      self.logs.write_step(self.step, self.last_terms, rate,
                           self.learning_rate, self.lam_depth_sm, view, light,
                           self.lam_flip, self.lam_rerender_view,
                           self.lam_depth_deviation)
      if self.step % self.checkpoint_every_steps == 0:
        self.save()
      if self.budget.spent(self.step):
        return False
    return True

  def run_one_step(self, batch):
    """One step at the scheduled learning rate and loss weights.

    Returns:
      The step's (view `[B, 6]`, light `[B, 4]`).

    Raises:
      FloatingPointError: the loss is not finite.
    """
    self.learning_rate, self.lam_depth_sm = self.schedules.at(
        self.budget.fraction(self.step), self.step)
    self.lam_flip = self.schedules.lam_flip_at(self.epoch, self.step)
    self.lam_rerender_view = self.schedules.lam_rerender_view_at(self.step)
    self.lam_depth_deviation = self.schedules.lam_depth_deviation_at(
        self.step)
    self.checkpoint.optimizer.learning_rate.assign(self.learning_rate)
    terms, view, light = self.train_step(
        batch, tf.constant(self.lam_flip, tf.float32),
        tf.constant(self.lam_depth_sm, tf.float32),
        tf.constant(self.lam_rerender_view, tf.float32),
        tf.constant(self.lam_depth_deviation, tf.float32))
    self.checkpoint.step.assign_add(1)
    loss = float(terms["total"])
    if not np.isfinite(loss):
      raise FloatingPointError(
          f"Loss became {loss} at step {self.step}; the last good checkpoint "
          f"is {self.manager.latest_checkpoint}. Lower train.learning_rate "
          "or check the data.")
    self.last_terms = {k: float(v) for k, v in terms.items()}
    return view, light

  def save(self):
    """Checkpoints the current state, named by its step.

    Under MultiWorkerMirroredStrategy saving is collective: every worker
    saves at the same steps.
    """
    self.manager.save(checkpoint_number=self.step)
    self._saved = (self.step, self.epoch)

  def save_last(self):
    """Checkpoints the current state unless this run just saved it."""
    if self._saved != (self.step, self.epoch):
      self.save()


def finish(runner, model_dir, output_dir, is_chief):
  """Ends a run: the last checkpoint, the final factor images and weights
  (model_dir/final.weights.h5) on the chief, the scratch output_dir removed
  elsewhere; prints the run's summary.

  Returns:
    The summary: steps, epochs, seconds, images_per_second, skipped_files,
    final_weights, learning_rate, lam_depth_sm, lam_flip, then the last
    step's
    `loss/<term>` and the last validation's `val/<score>`.
  """
  runner.save_last()
  runner.logs.write_images(runner.step)
  final = os.path.join(model_dir, "final.weights.h5")
  if is_chief:
    checkpoints.save_final_weights(runner.checkpoint.model, final)
  else:
    shutil.rmtree(output_dir, ignore_errors=True)
  elapsed = runner.budget.seconds()
  train_info, val_info = runner.data.train_info, runner.data.val_info
  summary = {
      "steps": runner.step, "epochs": runner.epoch, "seconds": elapsed,
      "images_per_second": ((runner.step - runner.start_step) *
                            runner.batch_size / max(elapsed, 1e-9)),
      "skipped_files": train_info["num_skipped"] + val_info["num_skipped"],
      "final_weights": final, "learning_rate": float(runner.learning_rate),
      "lam_depth_sm": float(runner.lam_depth_sm),
      "lam_flip": float(runner.lam_flip),
      "lam_rerender_view": float(runner.lam_rerender_view),
      "lam_depth_deviation": float(runner.lam_depth_deviation),
      **{f"loss/{k}": v for k, v in runner.last_terms.items()},
      **runner.val_scores}
  print("\nTraining summary")
  for key, value in summary.items():
    print(f"  {key:24s} {value:.4f}" if isinstance(value, float)
          else f"  {key:24s} {value}")
  if train_info["skipped"] or val_info["skipped"]:
    print("  unreadable files skipped: " +
          ", ".join(train_info["skipped"] + val_info["skipped"]))
  return summary


@_holding_model_dir_lock
@gin.configurable(denylist=["model_dir", "strategy"])
def train(model_dir, strategy, batch_size=64, num_epochs=30,
          learning_rate=1e-4, weight_decay=5e-4, adam_epsilon=1e-8,
          learning_rate_schedule="constant", final_learning_rate_ratio=0.0,
          learning_rate_drop_step=None,
          final_lam_depth_sm=None, lam_flip_start_epoch=0,
          initial_lam_flip=None, lam_flip_warmup_steps=0,
          rerender_view_start_step=0, rerender_view_ramp_steps=0,
          depth_deviation_start_step=0, depth_deviation_ramp_steps=0,
          final_lam_depth_deviation=None, depth_deviation_final_step=0,
          view_learning_rate=None, jit_compile=False, mixed_precision=False,
          keep_checkpoints=3,
          checkpoint_every_steps=1000, summary_every_steps=50,
          image_summary_every_steps=500, max_steps=None, max_seconds=None,
          generate_synthetic_data=False, seed=0):
  """Runs training; returns the final summary dict (`finish`).

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
    learning_rate_schedule: 'constant' (the paper), 'cosine': from
      learning_rate down to final_learning_rate_ratio * learning_rate over
      the run's budget (`budget_fraction`), or 'step': learning_rate until
      learning_rate_drop_step, then final_learning_rate_ratio times it.
    final_learning_rate_ratio: see learning_rate_schedule.
    learning_rate_drop_step: see learning_rate_schedule, > 0 with 'step'.
    final_lam_depth_sm: None keeps `Unsup3D.lam_depth_sm` constant (the
      paper); a value moves the weight to it along the same cosine.
    lam_flip_start_epoch: before this epoch the flip terms weigh 1, from it
      on `Unsup3D.lam_flip` (the reference implementation's schedule).
    initial_lam_flip: None, or the flip terms' weight at step 0, easing
      along half a cosine to `Unsup3D.lam_flip` over lam_flip_warmup_steps
      steps (replaces lam_flip_start_epoch). A weight above 1 makes a
      symmetric canonical image cheaper than copying the input, so the
      view, not the albedo, explains a turned face early on.
    lam_flip_warmup_steps: see initial_lam_flip, > 0 with it.
    rerender_view_start_step: the re-rendered view term
      (`Unsup3D.lam_rerender_view`) weighs 0 before this step, so that the
      canonical depth has relief before the view network learns to read
      its turns (a flat depth turned shows no yaw).
    rerender_view_ramp_steps: then its weight rises to
      `Unsup3D.lam_rerender_view` along half a cosine over this many steps.
    depth_deviation_start_step, depth_deviation_ramp_steps: the same for
      the depth deviation term (`Unsup3D.lam_depth_deviation`): from the
      first step it holds every face to one template before the depth has
      a face's relief, and the template then stays a tilt.
    final_lam_depth_deviation: None keeps `Unsup3D.lam_depth_deviation`
      once eased in; a value (>= 0) moves the weight on to it from
      depth_deviation_final_step, over depth_deviation_ramp_steps steps:
      a stronger hold on the template once the shared shape has formed.
    depth_deviation_final_step: see final_lam_depth_deviation; after the
      first ramp ends.
    view_learning_rate: None (the paper: one Adam for every network), or
      the view network's own Adam step size, held constant over the run
      while learning_rate follows its schedule: the view keeps learning to
      read turns (the re-rendered view term) after the depth and albedo
      have slowed down.
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
  keras.utils.set_random_seed(seed)  # weights, shuffling and flips
  is_chief, output_dir = output_folder(model_dir, strategy)
  os.makedirs(output_dir, exist_ok=True)
  # The model and its settings first: a config they reject stops the run
  # before the data scan, and so does a checkpoint that does not fit it.
  checkpoint = build_model_and_optimizer(strategy, learning_rate,
                                         adam_epsilon, mixed_precision,
                                         view_learning_rate)
  model = checkpoint.model
  datasets.check_image_size(model.image_size)
  schedules = Schedules(
      learning_rate, learning_rate_schedule, final_learning_rate_ratio,
      learning_rate_drop_step,
      lam_depth_sm=model.lam_depth_sm, final_lam_depth_sm=final_lam_depth_sm,
      lam_flip=model.lam_flip, lam_flip_start_epoch=lam_flip_start_epoch,
      initial_lam_flip=initial_lam_flip,
      lam_flip_warmup_steps=lam_flip_warmup_steps,
      lam_rerender_view=model.lam_rerender_view,
      rerender_view_start_step=rerender_view_start_step,
      rerender_view_ramp_steps=rerender_view_ramp_steps,
      lam_depth_deviation=model.lam_depth_deviation,
      depth_deviation_start_step=depth_deviation_start_step,
      depth_deviation_ramp_steps=depth_deviation_ramp_steps,
      final_lam_depth_deviation=final_lam_depth_deviation,
      depth_deviation_final_step=depth_deviation_final_step)
  manager = restore(checkpoint, model_dir, output_dir, keep_checkpoints)
  data = prepare_data(strategy, model_dir, checkpoint.epoch.numpy,
                      batch_size, seed, generate_synthetic_data)
  train_step = make_train_step(
      model, checkpoint.optimizer, strategy, weight_decay, jit_compile,
      getattr(checkpoint, "view_optimizer", None))
  logs = TensorBoardLogs(model, model_dir, is_chief, data.val,
                         summary_every_steps, image_summary_every_steps)
  budget = Budget(num_epochs * data.steps_per_epoch, max_steps, max_seconds)
  runner = Runner(checkpoint, manager, data, train_step, schedules, budget,
                  logs, num_epochs=num_epochs, batch_size=batch_size,
                  checkpoint_every_steps=checkpoint_every_steps)
  runner.run()
  return finish(runner, model_dir, output_dir, is_chief)


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
      "strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device"],
      "auto: mirrored with several local GPUs, else one_device; mirrored: "
      "all local GPUs (else the CPU); multi_worker: "
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
