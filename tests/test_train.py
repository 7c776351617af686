"""The training system end to end on tiny data: configs, resume, replicas."""

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import checkpoints
from tf_unsup3d import train as train_lib
from tf_unsup3d.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["synthetic", "celeba", "synface", "cats", "cars", "synthetic_128",
           "celeba_128", "synface_128", "cats_128"]
TINY = ["Unsup3D.nf = 4", "Unsup3D.zdim = 8", "Unsup3D.conf_zdim = 8",
        "Unsup3D.light_view_nf = 4", "Unsup3D.vgg_weights = None",
        "train.batch_size = 2", "train.summary_every_steps = 1",
        "train.image_summary_every_steps = 2",
        "train.checkpoint_every_steps = 2"]


@pytest.fixture(scope="module")
def paired_data(tmp_path_factory):
  """A few synthetic faces; the same files serve folder and paired layouts."""
  root = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(root, 4, 2, 2, image_size=64, seed=3, progress=False)
  return root


def bindings(config, data_dir, extra=()):
  paired = config.split("_")[0] in ("synthetic", "synface")
  layout = "paired" if paired else "folder"
  return TINY + [f"make_dataset.data_dir = '{data_dir}'",
                 f"make_dataset.layout = '{layout}'",
                 # the paper crops assume larger photos than 64x64
                 "make_dataset.crop_spec = None"] + list(extra)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses_and_trains_one_step(config, paired_data,
                                                 tmp_path):
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, "gin_configs", f"{config}.gin")],
      bindings(config, paired_data, ["train.max_steps = 1"]))
  summary = train_lib.train(str(tmp_path),
                            tf.distribute.OneDeviceStrategy("/cpu:0"))
  gin.clear_config()
  assert summary["steps"] == 1 and np.isfinite(summary["loss/total"])
  assert os.path.isfile(summary["final_weights"])
  assert os.listdir(tmp_path / "train")  # TensorBoard events


@pytest.mark.slow
@pytest.mark.parametrize("config", ["synthetic", "synface"])
def test_xla_and_mixed_precision_switches_train(config, paired_data,
                                                tmp_path):
  # synface has the perceptual loss and confidence maps: VGG16 then runs in
  # bfloat16 on float32 reconstructions.
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, "gin_configs", f"{config}.gin")],
      bindings(config, paired_data, [
          "train.max_steps = 2", "train.jit_compile = True",
          "train.mixed_precision = True"]))
  summary = train_lib.train(str(tmp_path),
                            tf.distribute.OneDeviceStrategy("/cpu:0"))
  gin.clear_config()
  assert summary["steps"] == 2 and np.isfinite(summary["loss/total"])
  assert keras.mixed_precision.global_policy().name == "float32"


def run_cli(model_dir, data_dir, extra, wait=True, strategy="one_device",
            env=None, capture=False):
  args = [sys.executable, "-m", "tf_unsup3d.train",
          f"--gin_file={ROOT}/gin_configs/synthetic.gin",
          f"--model_dir={model_dir}", f"--strategy={strategy}"]
  args += [f"--gin_param={b}" for b in bindings("synthetic", data_dir, extra)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  if wait:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)
  output = subprocess.PIPE if capture else subprocess.DEVNULL
  return subprocess.Popen(args, stdout=output, stderr=output, text=True,
                          cwd=ROOT, env=env)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(paired_data, tmp_path):
  """Kill after the step-2 checkpoint; the next run restores step 2."""
  process = run_cli(tmp_path, paired_data,
                    ["train.num_epochs = 100", "train.max_steps = 1000"],
                    wait=False)
  checkpoints = tmp_path / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and not (checkpoints / "checkpoint").exists():
    time.sleep(0.5)
  process.send_signal(signal.SIGKILL)
  process.wait()
  latest = tf.train.latest_checkpoint(str(checkpoints))
  assert latest is not None
  saved_step = int(latest.rsplit("-", 1)[1])
  assert saved_step >= 2
  result = run_cli(tmp_path, paired_data,
                   ["train.num_epochs = 100", f"train.max_steps = {saved_step + 2}"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"at step {saved_step}," in result.stdout
  assert f"steps                    {saved_step + 2}" in result.stdout


def launch_two_workers(model_dir, data_dir, extra):
  """Two `--strategy=multi_worker` processes with a localhost TF_CONFIG."""
  sockets = [socket.socket() for _ in range(2)]
  for sock in sockets:
    sock.bind(("localhost", 0))
  workers = [f"localhost:{sock.getsockname()[1]}" for sock in sockets]
  for sock in sockets:
    sock.close()
  processes = []
  for index in range(2):
    tf_config = json.dumps({"cluster": {"worker": workers},
                            "task": {"type": "worker", "index": index}})
    processes.append(run_cli(model_dir, data_dir, extra, wait=False,
                             strategy="multi_worker",
                             env={"TF_CONFIG": tf_config}, capture=True))
  results = [process.communicate(timeout=600) for process in processes]
  # A worker that crashes makes the other fail too: show every log.
  assert all(p.returncode == 0 for p in processes), "\n".join(
      f"worker {i} exit {p.returncode}: {err[-2000:]}"
      for i, (p, (_, err)) in enumerate(zip(processes, results)))
  return [stdout for stdout, _ in results]


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(paired_data, tmp_path):
  """--strategy=multi_worker: both workers step together, worker 0 (the
  chief) writes checkpoints, summaries and weights, and both resume."""
  for stdout in launch_two_workers(tmp_path, paired_data,
                                   ["train.max_steps = 3"]):
    assert "steps                    3" in stdout
  latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
  assert latest is not None and latest.endswith("-3")
  assert (tmp_path / "final.weights.h5").exists()
  assert list((tmp_path / "train").glob("events.*"))
  assert not list((tmp_path / "workers").glob("*"))  # scratch removed
  for stdout in launch_two_workers(tmp_path, paired_data,
                                   ["train.max_steps = 4"]):
    assert "at step 3," in stdout and "steps                    4" in stdout


def first_update(paired_data, tmp_path, devices):
  """Weights after one step on a global batch of 2 over `devices` replicas."""
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, "gin_configs", "synthetic.gin")],
      bindings("synthetic", paired_data, [
          "train.max_steps = 1", "train.image_summary_every_steps = 100",
          "make_dataset.shuffle_buffer = 1", "make_dataset.random_flip = False",
          # Parallel decoding may otherwise reorder the training images.
          "make_dataset.deterministic = True",
          # Adam's first step is lr * g / (|g| + eps): with eps = lr = 1 the
          # update is ~g itself, so gradient differences show in the weights.
          "train.learning_rate = 1.0", "train.adam_epsilon = 1.0"]))
  strategy = tf.distribute.MirroredStrategy(devices)
  train_lib.train(str(tmp_path), strategy)
  model = checkpoints.load_model(str(tmp_path / "final.weights.h5"))
  gin.clear_config()
  return [v.numpy() for v in model.trainable_variables]


@pytest.mark.slow
def test_two_replicas_match_one_device(paired_data, tmp_path):
  """Ratio-of-sums losses and summed gradients: the same first update."""
  cpus = tf.config.list_logical_devices("CPU")
  if len(cpus) < 2:
    pytest.skip("needs two logical CPUs (conftest configures them)")
  one = first_update(paired_data, tmp_path / "one", [cpus[0].name])
  two = first_update(paired_data, tmp_path / "two",
                     [cpus[0].name, cpus[1].name])
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_auto_strategy_runs_one_replica_without_several_gpus():
  """'auto' mirrors only over several GPUs; otherwise one device, one
  replica (conftest's two logical CPUs are not GPUs)."""
  strategy = train_lib.make_strategy("auto")
  gpus = tf.config.list_logical_devices("GPU")
  if len(gpus) > 1:
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == len(gpus)
  else:
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    device = strategy.extended.worker_devices[0]
    assert ("GPU" if gpus else "CPU") in device
  with pytest.raises(ValueError, match="Unknown strategy 'mirror'"):
    train_lib.make_strategy("mirror")


def test_bfloat16_check_reads_the_cpu_flags(tmp_path, caplog, monkeypatch):
  """bfloat16 counts as fast only with AVX512_BF16 or AMX-BF16 among the
  CPU's flags (AVX-512 alone emulates it); an unreadable file is unknown;
  and asking for mixed precision without them logs how to turn it off."""
  cpuinfo = tmp_path / "cpuinfo"
  base = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni"
  for extra, fast in (("", False), (" avx512_bf16", True),
                      (" amx_bf16 amx_tile", True), (" avx512_bf16x", False)):
    cpuinfo.write_text(base + extra + "\nbogomips\t: 5200\n")
    assert train_lib.cpu_has_fast_bfloat16(str(cpuinfo)) is fast, extra
  assert train_lib.cpu_has_fast_bfloat16(str(tmp_path / "missing")) is None
  # The warning comes before the model is built; a stand-in builder stops
  # there (the policy's restoring is `checkpoints.build_model`'s, tested in
  # test_checkpoints.py).
  strategy = train_lib.make_strategy("one_device")
  monkeypatch.setattr(train_lib, "cpu_has_fast_bfloat16", lambda: False)
  monkeypatch.setattr(train_lib.tf.config, "list_physical_devices",
                      lambda kind=None: [])

  def stop(mixed_precision):
    assert mixed_precision
    raise RuntimeError("stand-in builder")

  monkeypatch.setattr(train_lib.checkpoints, "build_model", stop)
  with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError):
    train_lib.build_model_and_optimizer(strategy, mixed_precision=True)
  assert "train.mixed_precision = False" in caplog.text
  assert keras.mixed_precision.global_policy().name == "float32"


def _tiny_model(mixed_precision):
  """A built float32 Unsup3D of tiny widths (`checkpoints.build_model`'s
  stand-in)."""
  from tf_unsup3d import model as model_lib  # pylint: disable=g-import-not-at-top
  del mixed_precision
  model = model_lib.Unsup3D(nf=4, zdim=8, light_view_nf=4, conf_zdim=8,
                            lam_perc=0.0, use_conf_map=False)
  model.build((None, 64, 64, 3))
  return model


def test_view_learning_rate_gives_the_view_network_its_own_adam(monkeypatch):
  monkeypatch.setattr(train_lib.checkpoints, "build_model", _tiny_model)
  strategy = tf.distribute.get_strategy()
  with pytest.raises(ValueError, match="train.view_learning_rate"):
    train_lib.build_model_and_optimizer(strategy, view_learning_rate=0.0)
  keras.utils.set_random_seed(0)
  state = train_lib.build_model_and_optimizer(
      strategy, learning_rate=1e-4, view_learning_rate=1e-2)
  model = state.model
  view_ids = {id(v) for v in model.net_view.trainable_variables}
  before = {id(v): v.numpy() for v in model.trainable_variables}
  step = train_lib.make_train_step(model, state.optimizer, strategy, 0.0,
                                   view_optimizer=state.view_optimizer)
  images = tf.random.stateless_uniform([2, 64, 64, 3], seed=[1, 2])
  step({"image": images}, tf.constant(0.5), tf.constant(0.0),
       tf.constant(0.0), tf.constant(0.0))
  # Adam's first step moves every weight with a gradient by its step size
  # (m / sqrt(v) = sign(g)): 1e-2 in the view network, 1e-4 elsewhere.
  moved = {id(v): np.abs(v.numpy() - before[id(v)]).max()
           for v in model.trainable_variables}
  view_moves = [m for k, m in moved.items() if k in view_ids]
  other_moves = [m for k, m in moved.items() if k not in view_ids]
  assert max(view_moves) == pytest.approx(1e-2, rel=1e-3)
  assert max(other_moves) == pytest.approx(1e-4, rel=1e-3)
  assert int(state.optimizer.iterations) == 1
  assert int(state.view_optimizer.iterations) == 1


def test_resume_names_a_view_optimizer_mismatch(monkeypatch, tmp_path):
  monkeypatch.setattr(train_lib.checkpoints, "build_model", _tiny_model)
  strategy = tf.distribute.get_strategy()
  for saved, resumed, fix in [(3e-4, None, "to that run's step size"),
                              (None, 3e-4, "view_learning_rate = None"),
                              (3e-4, 1e-3, None)]:
    folder = str(tmp_path / f"{saved}_{resumed}")
    state = train_lib.build_model_and_optimizer(
        strategy, view_learning_rate=saved)
    state.step.assign(7)
    tf.train.CheckpointManager(state, folder, 1).save()
    fresh = train_lib.build_model_and_optimizer(
        strategy, view_learning_rate=resumed)
    if fix is None:  # The step size may change; the optimizers' layout not.
      assert train_lib.resume(fresh, fresh.model, folder)
      assert int(fresh.step) == 7
      continue
    with pytest.raises(checkpoints.CheckpointError) as error:
      train_lib.resume(fresh, fresh.model, folder)
    assert fix in str(error.value) and folder in str(error.value)
    assert int(fresh.step) == 0  # Nothing was read.


def test_cosine_schedule_and_budget_fraction():
  assert train_lib.cosine_schedule(1.0, 0.0, 0.0) == 1.0
  assert train_lib.cosine_schedule(1.0, 0.0, 1.0) == pytest.approx(0.0)
  assert train_lib.cosine_schedule(3.0, 1.0, 0.5) == pytest.approx(2.0)
  assert train_lib.cosine_schedule(1.0, 0.0, 0.25) == pytest.approx(
      (1 + math.cos(math.pi / 4)) / 2)
  assert train_lib.cosine_schedule(1.0, 0.0, 7.0) == pytest.approx(0.0)
  # Whichever budget runs out first sets the fraction.
  assert train_lib.budget_fraction(50, 10.0, 200) == 0.25
  assert train_lib.budget_fraction(50, 10.0, 200, max_steps=100) == 0.5
  assert train_lib.budget_fraction(50, 90.0, 200, max_steps=100,
                                   max_seconds=100.0) == pytest.approx(0.9)
  assert train_lib.budget_fraction(500, 10.0, 200) == 1.0


def test_schedules_follow_the_budget_and_check_their_settings():
  constant = train_lib.Schedules(1e-3, lam_depth_sm=0.5)
  assert constant.at(0.0) == constant.at(0.7) == (1e-3, 0.5)
  cosine = train_lib.Schedules(1e-3, "cosine", 0.1, lam_depth_sm=1.0,
                               final_lam_depth_sm=0.2)
  assert cosine.at(0.0) == pytest.approx((1e-3, 1.0))
  assert cosine.at(0.5) == pytest.approx((0.55e-3, 0.6))
  assert cosine.at(1.0) == pytest.approx((1e-4, 0.2))
  drop = train_lib.Schedules(1e-3, "step", 0.1, learning_rate_drop_step=600,
                             lam_depth_sm=1.0)
  # Steps, not the budget's fraction, decide the drop.
  assert drop.at(0.9, step=599) == pytest.approx((1e-3, 1.0))
  assert drop.at(0.1, step=600) == pytest.approx((1e-4, 1.0))
  assert drop.at(1.0, step=5000) == pytest.approx((1e-4, 1.0))
  with pytest.raises(ValueError, match="'cosine' or 'step', got 'linear'"):
    train_lib.Schedules(1e-3, "linear")
  with pytest.raises(ValueError, match="learning_rate_drop_step > 0"):
    train_lib.Schedules(1e-3, "step")
  with pytest.raises(ValueError, match="needs Unsup3D.lam_depth_sm > 0"):
    train_lib.Schedules(1e-3, lam_depth_sm=0.0, final_lam_depth_sm=0.1)


def test_the_flip_terms_weigh_one_before_their_start_epoch():
  late = train_lib.Schedules(1e-4, lam_flip=0.5, lam_flip_start_epoch=2)
  assert [late.lam_flip_at(e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.5]
  at_once = train_lib.Schedules(1e-4, lam_flip=0.5)
  assert at_once.lam_flip_at(0) == 0.5


def test_the_flip_warmup_eases_from_its_initial_weight_to_lam_flip():
  warm = train_lib.Schedules(1e-4, lam_flip=0.5, initial_lam_flip=2.0,
                             lam_flip_warmup_steps=100)
  assert warm.lam_flip_at(0, step=0) == pytest.approx(2.0)
  # Half a cosine: the mean of the two ends halfway, monotone, then flat.
  assert warm.lam_flip_at(0, step=50) == pytest.approx(1.25)
  weights = [warm.lam_flip_at(0, step=s) for s in range(0, 101, 10)]
  assert all(a > b for a, b in zip(weights, weights[1:]))
  assert warm.lam_flip_at(3, step=100) == pytest.approx(0.5)
  assert warm.lam_flip_at(5, step=10_000) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="lam_flip_warmup_steps > 0"):
    train_lib.Schedules(1e-4, initial_lam_flip=2.0)


@pytest.mark.parametrize("term", ["rerender_view", "depth_deviation"])
def test_eased_in_weights_start_late_and_ramp_up(term):
  ramp = train_lib.Schedules(1e-4, **{f"lam_{term}": 0.8,
                                      f"{term}_start_step": 200,
                                      f"{term}_ramp_steps": 100})
  weight_at = getattr(ramp, f"lam_{term}_at")
  assert weight_at(0) == 0.0
  assert weight_at(199) == 0.0
  assert weight_at(250) == pytest.approx(0.4)
  weights = [weight_at(s) for s in range(200, 301, 10)]
  assert all(a < b for a, b in zip(weights, weights[1:]))
  assert weight_at(10_000) == pytest.approx(0.8)
  # No start and no ramp: the full weight from the first step.
  plain = train_lib.Schedules(1e-4, **{f"lam_{term}": 0.8})
  assert getattr(plain, f"lam_{term}_at")(0) == 0.8
  with pytest.raises(ValueError, match=f"{term}_start_step"):
    train_lib.Schedules(1e-4, **{f"{term}_start_step": -1})
  with pytest.raises(ValueError, match=f"{term}_ramp_steps"):
    train_lib.Schedules(1e-4, **{f"{term}_ramp_steps": -5})


def test_depth_deviation_moves_on_to_its_final_weight_late():
  late = train_lib.Schedules(1e-4, lam_depth_deviation=0.5,
                             depth_deviation_start_step=100,
                             depth_deviation_ramp_steps=100,
                             final_lam_depth_deviation=2.0,
                             depth_deviation_final_step=600)
  weight_at = late.lam_depth_deviation_at
  assert weight_at(50) == 0.0
  assert weight_at(200) == pytest.approx(0.5)
  assert weight_at(599) == pytest.approx(0.5)
  # Half way along the second ramp: half way from 0.5 to 2.0.
  assert weight_at(650) == pytest.approx(1.25)
  weights = [weight_at(s) for s in range(600, 701, 10)]
  assert all(a < b for a, b in zip(weights, weights[1:]))
  assert weight_at(10_000) == pytest.approx(2.0)
  # A lower final weight eases down to it.
  lower = train_lib.Schedules(1e-4, lam_depth_deviation=0.5,
                              final_lam_depth_deviation=0.0,
                              depth_deviation_final_step=10)
  assert lower.lam_depth_deviation_at(5) == 0.5
  assert lower.lam_depth_deviation_at(10) == 0.0
  with pytest.raises(ValueError, match="depth_deviation_final_step"):
    train_lib.Schedules(1e-4, lam_depth_deviation=0.5,
                        depth_deviation_start_step=100,
                        depth_deviation_ramp_steps=100,
                        final_lam_depth_deviation=2.0,
                        depth_deviation_final_step=150)
  with pytest.raises(ValueError, match="final_lam_depth_deviation"):
    train_lib.Schedules(1e-4, final_lam_depth_deviation=-1.0,
                        depth_deviation_final_step=10)


def test_a_resumed_epoch_skips_the_batches_it_trained_on():
  # 4 steps an epoch.
  assert train_lib.batches_to_skip(0, 0, 4) == 0
  assert train_lib.batches_to_skip(6, 1, 4) == 2   # killed mid-epoch 2
  assert train_lib.batches_to_skip(8, 2, 4) == 0   # after epoch 2 closed
  # Stopped by the budget at epoch 2's last step, before closing it.
  assert train_lib.batches_to_skip(8, 1, 4) == 4
  # Counters off the current split's size (it grew or shrank since).
  assert train_lib.batches_to_skip(3, 1, 4) == 0
  assert train_lib.batches_to_skip(20, 1, 4) == 4


class _Clock:
  """A settable stand-in for time.perf_counter."""

  def __init__(self, now=100.0):
    self.now = now

  def __call__(self):
    return self.now


def test_the_budget_runs_out_at_max_steps_or_max_seconds():
  clock = _Clock()
  budget = train_lib.Budget(200, max_steps=100, max_seconds=60.0, clock=clock)
  assert budget.seconds() == 0.0 and budget.fraction(50) == 0.5
  assert not budget.spent(99) and budget.spent(100)
  assert budget.steps_spent(100) and not budget.steps_spent(99)
  clock.now += 60.0
  assert not budget.spent(10)  # the limit itself is still within budget
  clock.now += 1.0
  assert budget.spent(10) and not budget.steps_spent(10)
  assert budget.fraction(10) == 1.0
  unlimited = train_lib.Budget(200, clock=clock)
  clock.now += 1e6
  assert not unlimited.spent(10**6) and unlimited.fraction(50) == 0.25


class _StandIns:
  """A `Runner` on stand-in parts: a training step that records what it was
  given and a checkpoint manager that records what it saved, no model."""

  def __init__(self, steps_per_epoch=4, num_epochs=3, step=0, epoch=0,
               checkpoint_every_steps=3, max_steps=None, max_seconds=None,
               lam_flip_start_epoch=1, loss=1.0, initial_lam_flip=None,
               lam_flip_warmup_steps=0):
    self.trained, self.saved, self.validated = [], [], []
    self.clock = _Clock()
    self.loss = loss
    self.checkpoint = types.SimpleNamespace(
        step=tf.Variable(step, dtype=tf.int64),
        epoch=tf.Variable(epoch, dtype=tf.int64),
        optimizer=types.SimpleNamespace(learning_rate=tf.Variable(0.0)))
    manager = types.SimpleNamespace(save=self._save, latest_checkpoint="ckpt")
    data = types.SimpleNamespace(
        train=[{"index": i} for i in range(steps_per_epoch)], val="val",
        steps_per_epoch=steps_per_epoch)
    logs = types.SimpleNamespace(write_step=lambda *args: None,
                                 write_images=lambda step: None,
                                 validate=self._validate)
    schedules = train_lib.Schedules(
        1e-3, "cosine", 0.0, lam_flip=0.5,
        lam_flip_start_epoch=lam_flip_start_epoch,
        initial_lam_flip=initial_lam_flip,
        lam_flip_warmup_steps=lam_flip_warmup_steps)
    budget = train_lib.Budget(num_epochs * steps_per_epoch, max_steps,
                              max_seconds, clock=self.clock)
    self.runner = train_lib.Runner(
        self.checkpoint, manager, data, self._train_step, schedules, budget,
        logs, num_epochs=num_epochs, batch_size=2,
        checkpoint_every_steps=checkpoint_every_steps)

  def _train_step(self, batch, lam_flip, lam_depth_sm, lam_rerender_view,
                  lam_depth_deviation):
    del lam_depth_sm, lam_rerender_view, lam_depth_deviation
    self.trained.append((int(self.checkpoint.epoch.numpy()), batch["index"],
                         float(lam_flip),
                         float(self.checkpoint.optimizer.learning_rate)))
    self.clock.now += 1.0
    return ({"total": tf.constant(self.loss)}, tf.zeros([2, 6]),
            tf.zeros([2, 4]))

  def _save(self, checkpoint_number):
    assert checkpoint_number == int(self.checkpoint.step.numpy())
    self.saved.append((checkpoint_number, int(self.checkpoint.epoch.numpy())))

  def _validate(self, val_data, step):
    assert val_data == "val"
    self.validated.append(step)
    return {"val/step": step}


def test_a_run_trains_every_batch_and_saves_each_state_once():
  run = _StandIns()
  run.runner.run()
  run.runner.save_last()
  assert [(e, i) for e, i, _, _ in run.trained] == [
      (e, i) for e in range(3) for i in range(4)]
  assert [f for _, _, f, _ in run.trained] == [1.0] * 4 + [0.5] * 8
  # Every 3 steps and after every epoch (step 12 twice: the epoch counter
  # differs); the end of the run does not save its last state again.
  assert run.saved == [(3, 0), (4, 1), (6, 1), (8, 2), (9, 2), (12, 2),
                       (12, 3)]
  assert run.validated == [4, 8, 12] and run.runner.val_scores == {
      "val/step": 12}
  # Each step ran at the learning rate of the budget spent before it.
  np.testing.assert_allclose(
      [lr for _, _, _, lr in run.trained],
      [train_lib.cosine_schedule(1e-3, 0.0, k / 12) for k in range(12)],
      rtol=1e-6)
  assert run.runner.learning_rate == pytest.approx(
      train_lib.cosine_schedule(1e-3, 0.0, 11 / 12))
  assert run.runner.last_terms == {"total": 1.0}


def test_a_resumed_run_trains_the_rest_of_its_epoch():
  run = _StandIns(step=6, epoch=1, max_steps=10)
  run.runner.run()
  run.runner.save_last()
  assert [(e, i) for e, i, _, _ in run.trained] == [
      (1, 2), (1, 3), (2, 0), (2, 1)]
  # Stopped within epoch 3 by max_steps: saved once, the epoch still open.
  assert run.saved == [(8, 2), (9, 2), (10, 2)]
  assert run.runner.start_step == 6 and run.runner.step == 10


def test_each_step_trains_at_the_flip_warmup_weight_of_its_step():
  run = _StandIns(step=2, epoch=0, max_steps=8, initial_lam_flip=2.0,
                  lam_flip_warmup_steps=6)
  run.runner.run()
  np.testing.assert_allclose(
      [f for _, _, f, _ in run.trained],
      [train_lib.cosine_schedule(2.0, 0.5, k / 6) for k in range(2, 8)],
      rtol=1e-6)


def test_a_run_stops_when_its_time_is_spent():
  run = _StandIns(max_seconds=5.5)  # each stand-in step takes 1 s
  run.runner.run()
  run.runner.save_last()
  assert len(run.trained) == 6 and run.saved == [(3, 0), (4, 1), (6, 1)]


def test_a_run_resumed_at_its_step_budget_trains_nothing_and_saves_once():
  run = _StandIns(step=5, epoch=1, max_steps=5)
  run.runner.run()
  run.runner.save_last()
  assert run.trained == [] and run.saved == [(5, 1)]


def test_a_non_finite_loss_stops_the_run_naming_the_last_checkpoint():
  run = _StandIns(loss=float("nan"))
  with pytest.raises(FloatingPointError, match="at step 1;.* is ckpt"):
    run.runner.run()


def test_factor_images_are_written_once_per_step(monkeypatch, tmp_path):
  """The loop's image summary and the final one at the same step: one write."""
  written = []
  monkeypatch.setattr(train_lib.summaries, "write_images",
                      lambda writer, model, predict, images, step:
                      written.append(step))
  val = [{"image": tf.zeros([2, 8, 8, 3])}]
  logs = train_lib.TensorBoardLogs(None, str(tmp_path), True, val,
                                   every_steps=100, image_every_steps=2)
  view, light = np.zeros([2, 6]), np.zeros([2, 4])
  for step in (1, 2):
    logs.write_step(step, {"total": 1.0}, 1.0, 1e-4, 0.0, view, light)
  logs.write_images(2)  # the end of a run that stopped at step 2
  logs.write_images(3)
  assert written == [2, 3]



def test_validation_reports_both_mad_conventions_for_every_method(
    monkeypatch, tmp_path):
  """With ground-truth depth: SIDE, MAD and MAD-acos of the model and both
  baselines, means over the split's images, next to the mean losses."""
  results = {m: {"side": np.array([0.01, 0.03]), "mad": np.array([10., 20.]),
                 "mad_acos": np.array([12., 26.])}
             for m in ("model", "null_depth", "average_gt_depth")}
  results["null_depth"]["mad_acos"] = np.array([40., 50.])
  monkeypatch.setattr(train_lib.evaluate_lib, "evaluate",
                      lambda model, dataset, predict: results)
  model = types.SimpleNamespace(
      compute_losses=lambda images, outputs: {"total": tf.reduce_mean(images)})
  val = tf.data.Dataset.from_tensor_slices(
      {"image": np.stack([np.full([4, 4, 3], v, np.float32)
                          for v in (1.0, 1.0, 4.0)]),
       "depth": np.ones([3, 4, 4], np.float32)}).batch(2)
  writer = tf.summary.create_file_writer(str(tmp_path))
  scores = train_lib.validate(model, lambda images: None, val, writer, 5)
  assert scores["val/total"] == pytest.approx(2.0)  # (1 + 1 + 4) / 3 images
  for method in results:
    assert scores[f"val/side_{method}"] == pytest.approx(0.02)
    assert scores[f"val/mad_{method}"] == pytest.approx(15.0)
  assert scores["val/mad_acos_model"] == pytest.approx(19.0)
  assert scores["val/mad_acos_average_gt_depth"] == pytest.approx(19.0)
  assert scores["val/mad_acos_null_depth"] == pytest.approx(45.0)

@pytest.mark.slow
def test_learning_rate_and_depth_prior_follow_their_schedules(paired_data,
                                                              tmp_path):
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, "gin_configs", "synthetic.gin")],
      bindings("synthetic", paired_data, [
          "train.max_steps = 4", "train.learning_rate = 1e-3",
          "train.learning_rate_schedule = 'cosine'",
          "train.final_learning_rate_ratio = 0.1",
          "Unsup3D.lam_depth_sm = 1.0", "train.final_lam_depth_sm = 0.2",
          "Unsup3D.lam_depth_deviation = 0.5",
          "train.depth_deviation_start_step = 2",
          "train.depth_deviation_ramp_steps = 4"]))
  summary = train_lib.train(str(tmp_path),
                            tf.distribute.OneDeviceStrategy("/cpu:0"))
  gin.clear_config()
  # The last of the 4 steps ran at fraction 3/4 of the budget.
  assert summary["learning_rate"] == pytest.approx(
      train_lib.cosine_schedule(1e-3, 1e-4, 0.75))
  assert summary["lam_depth_sm"] == pytest.approx(
      train_lib.cosine_schedule(1.0, 0.2, 0.75))
  # Step 3 (0-based) is a quarter into the depth deviation's ramp.
  assert summary["lam_depth_deviation"] == pytest.approx(
      train_lib.cosine_schedule(0.0, 0.5, 0.25))
  assert summary["loss/depth_deviation"] > 0


# --- Run safety: one run per model_dir, checkpoints that fit or are skipped.


def test_model_dir_lock_names_the_holder_and_dies_with_it(tmp_path):
  """A second lock attempt fails naming the folder and the holder's PID; a
  killed holder leaves no stale lock."""
  lock_file = tmp_path / train_lib.ModelDirLock.FILE
  # A bare flock holder (no TensorFlow import: fast), like a running train.
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import fcntl, os, sys, time\n"
       "f = open(sys.argv[1], 'a+')\n"
       "fcntl.flock(f, fcntl.LOCK_EX)\n"
       "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()\n"
       "print('locked', flush=True)\n"
       "time.sleep(600)\n", str(lock_file)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(train_lib.ModelDirInUseError) as error:
      with train_lib.ModelDirLock(str(tmp_path)):
        pass
    assert str(tmp_path) in str(error.value)
    assert f"PID {holder.pid}" in str(error.value)
  finally:
    holder.kill()
    holder.wait()
  with train_lib.ModelDirLock(str(tmp_path)):
    assert lock_file.read_text().strip() == str(os.getpid())
    # Within one process too: a second open file is a second holder.
    with pytest.raises(train_lib.ModelDirInUseError,
                       match=f"PID {os.getpid()}"):
      with train_lib.ModelDirLock(str(tmp_path)):
        pass
  with train_lib.ModelDirLock(str(tmp_path)):  # Released on exit.
    pass


def test_a_second_run_on_a_locked_model_dir_stops_before_any_work(tmp_path):
  with train_lib.ModelDirLock(str(tmp_path)):
    with pytest.raises(train_lib.ModelDirInUseError, match=str(tmp_path)):
      train_lib.train(str(tmp_path), tf.distribute.OneDeviceStrategy("/cpu:0"))
  assert os.listdir(tmp_path) == [train_lib.ModelDirLock.FILE]


def _configure(data_dir, extra=()):
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, "gin_configs", "synthetic.gin")],
      bindings("synthetic", data_dir, ["train.image_summary_every_steps = 100"]
               + list(extra)))


@pytest.fixture(scope="module")
def four_steps(paired_data, tmp_path_factory):
  """A model_dir with ckpt-2, ckpt-4 and final.weights.h5 (synthetic.gin:
  no confidence maps)."""
  model_dir = str(tmp_path_factory.mktemp("four_steps"))
  _configure(paired_data, ["train.max_steps = 4"])
  try:
    train_lib.train(model_dir, tf.distribute.OneDeviceStrategy("/cpu:0"))
  finally:
    gin.clear_config()
  return model_dir


def _copy_with_truncated_newest(model_dir, destination):
  """A copy of `model_dir` whose ckpt-4 data file lost its second half."""
  shutil.copytree(model_dir, destination)
  data = os.path.join(destination, "checkpoints",
                      "ckpt-4.data-00000-of-00001")
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  return data


@pytest.mark.slow
def test_resume_skips_a_truncated_checkpoint_and_says_so_once(
    four_steps, paired_data, tmp_path, capsys, caplog):
  model_dir = str(tmp_path / "run")
  data = _copy_with_truncated_newest(four_steps, model_dir)
  caplog.set_level(logging.INFO)
  _configure(paired_data, ["train.max_steps = 6"])
  try:
    summary = train_lib.train(model_dir,
                              tf.distribute.OneDeviceStrategy("/cpu:0"))
  finally:
    gin.clear_config()
  assert summary["steps"] == 6  # Steps 3..6 from ckpt-2, not from scratch.
  out, err = capsys.readouterr()
  logs = "\n".join(r.getMessage() for r in caplog.records)
  assert data in logs and "truncated or corrupt" in logs
  resumed = os.path.join(model_dir, "checkpoints", "ckpt-2")
  epoch = tf.train.load_checkpoint(resumed).get_tensor(
      "epoch/.ATTRIBUTES/VARIABLE_VALUE")
  assert f"Resumed from {resumed} at step 2, epoch {epoch}." in out
  assert (out + err + logs).count("Resumed from") == 1
  # The run carried on: its new checkpoints are intact and loadable.
  assert checkpoints.checkpoint_problem(
      os.path.join(model_dir, "checkpoints", "ckpt-6")) is None


def _weights(model):
  return [v.numpy() for v in model.variables]


@pytest.mark.slow
def test_loading_falls_back_from_a_truncated_checkpoint(four_steps, paired_data,
                                                        tmp_path):
  model_dir = str(tmp_path / "run")
  data = _copy_with_truncated_newest(four_steps, model_dir)
  older = os.path.join(model_dir, "checkpoints", "ckpt-2")
  _configure(paired_data)
  try:
    from_dir = checkpoints.load_model(model_dir)
    from_older = checkpoints.load_model(older)
    intact = checkpoints.load_model(
        os.path.join(four_steps, "checkpoints", "ckpt-4"))
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.load_model(os.path.join(model_dir, "checkpoints", "ckpt-4"))
  finally:
    gin.clear_config()
  for a, b in zip(_weights(from_dir), _weights(from_older)):
    np.testing.assert_array_equal(a, b)
  # Not the step-4 weights: the fallback really is the older checkpoint.
  assert any(not np.array_equal(a, b) for a, b in
             zip(_weights(from_dir), _weights(intact)))
  assert data in str(error.value)
  assert f"--checkpoint={older}" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("binding, culprit", [
    ("Unsup3D.use_conf_map = True", "Unsup3D.use_conf_map"),
    ("Unsup3D.nf = 8", "Unsup3D.nf"),
    ("Unsup3D.light_view_nf = 8", "Unsup3D.light_view_nf")])
def test_a_differently_configured_checkpoint_is_refused(
    four_steps, paired_data, binding, culprit):
  """Every model variable must come from the checkpoint: a model configured
  otherwise is never loaded half random, from a checkpoint or weights file,
  nor resumed."""
  _configure(paired_data, [binding])
  try:
    for checkpoint in (four_steps,
                       os.path.join(four_steps, "final.weights.h5")):
      with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_model(checkpoint)
      assert culprit in str(error.value), str(error.value)
      assert checkpoint.split("/")[-1] in str(error.value)
    with pytest.raises(checkpoints.CheckpointError, match=culprit):
      train_lib.train(four_steps, tf.distribute.OneDeviceStrategy("/cpu:0"))
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_the_training_config_loads_every_variable(four_steps, paired_data):
  _configure(paired_data)
  try:
    from_checkpoint = checkpoints.load_model(four_steps)
    from_weights = checkpoints.load_model(
        os.path.join(four_steps, "final.weights.h5"))
  finally:
    gin.clear_config()
  # final.weights.h5 and ckpt-4 were written at the same step by Keras and
  # by tf.train.Checkpoint: the same values prove both loads complete.
  for a, b in zip(_weights(from_checkpoint), _weights(from_weights)):
    np.testing.assert_array_equal(a, b)


def test_a_wrong_gin_value_type_is_named_before_the_data_scan(tmp_path):
  missing_data = str(tmp_path / "no_data_here")
  _configure(missing_data, ["Unsup3D.nf = 'eight'",
                            "train.generate_synthetic_data = False"])
  try:
    with pytest.raises(TypeError) as error:
      train_lib.train(str(tmp_path / "run"),
                      tf.distribute.OneDeviceStrategy("/cpu:0"))
  finally:
    gin.clear_config()
  message = str(error.value)
  assert "Unsup3D.nf = 'eight'" in message and "integer" in message


def test_a_gin_parameter_typo_fails_when_the_config_is_parsed():
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match="nff"):
      gin.parse_config_files_and_bindings(
          [os.path.join(ROOT, "gin_configs", "synthetic.gin")],
          ["Unsup3D.nff = 8"])
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_the_cli_reports_a_gin_typo_before_touching_the_data(tmp_path):
  missing_data = str(tmp_path / "no_data_here")
  result = run_cli(tmp_path / "run", missing_data,
                   ["Unsup3D.nff = 8", "train.generate_synthetic_data = False"])
  assert result.returncode != 0
  assert "nff" in result.stderr
  assert not os.path.exists(missing_data)
  assert not (tmp_path / "run").exists()  # No cache, lock or log written.


@pytest.mark.slow
def test_an_interrupted_automatic_generation_is_finished_by_the_next_run(
    tmp_path):
  data_dir = str(tmp_path / "data")
  generation = ["generate_synthetic.num_train = 4",
                "generate_synthetic.num_val = 2",
                "generate_synthetic.num_test = 2",
                "generate_synthetic.seed = 3",
                "train.generate_synthetic_data = True"]
  reference = str(tmp_path / "reference")
  synthetic.generate(reference, 4, 2, 2, image_size=64, seed=3,
                     progress=False)
  # The state an interruption leaves: train complete, val half written in
  # its .partial folder, test not started.
  shutil.copytree(os.path.join(reference, "train"),
                  os.path.join(data_dir, "train"))
  shutil.copytree(os.path.join(reference, "val"),
                  os.path.join(data_dir, "val.partial"))
  for sub in ("image", "depth"):
    folder = os.path.join(data_dir, "val.partial", sub)
    os.remove(os.path.join(folder, sorted(os.listdir(folder))[-1]))
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, "gin_configs", "synthetic.gin")],
      bindings("synthetic", data_dir, generation + ["train.max_steps = 1"]))
  try:
    summary = train_lib.train(str(tmp_path / "run"),
                              tf.distribute.OneDeviceStrategy("/cpu:0"))
  finally:
    gin.clear_config()
  assert summary["steps"] == 1
  assert not os.path.exists(os.path.join(data_dir, "val.partial"))
  for split in ("val", "test"):  # finished, byte for byte the same faces
    for sub in ("image", "depth"):
      names = sorted(os.listdir(os.path.join(reference, split, sub)))
      assert sorted(os.listdir(os.path.join(data_dir, split, sub))) == names
      for name in names:
        with open(os.path.join(reference, split, sub, name), "rb") as a, \
            open(os.path.join(data_dir, split, sub, name), "rb") as b:
          assert a.read() == b.read(), (split, name)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
