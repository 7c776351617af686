"""Building the configured model, finding, loading and saving its weights."""

import glob
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import checkpoints

TINY = ["Unsup3D.nf = 8", "Unsup3D.zdim = 16", "Unsup3D.light_view_nf = 8",
        "Unsup3D.conf_zdim = 16", "Unsup3D.lam_perc = 0.0"]


@pytest.fixture
def tiny_config():
  gin.clear_config()
  gin.parse_config(TINY)
  yield
  gin.clear_config()


def _weights(model):
  return [v.numpy() for v in model.variables]


def test_build_model_follows_gin_and_its_overrides(tiny_config):
  model = checkpoints.build_model(use_conf_map=False)
  assert model.net_conf is None and model.vgg is None
  # The depth net's first convolution: 4 x 4, RGB in, nf = 8 filters out.
  assert tuple(model.net_depth.variables[0].shape) == (4, 4, 3, 8)
  # Built: a call creates no variable.
  count = len(model.variables)
  model(tf.zeros([1, 64, 64, 3]))
  assert len(model.variables) == count


def test_final_weights_load_back_exactly(tiny_config, tmp_path):
  model = checkpoints.build_model()
  path = str(tmp_path / "final.weights.h5")
  checkpoints.save_final_weights(model, path)
  assert os.listdir(tmp_path) == ["final.weights.h5"]  # no temporary left
  keras.utils.set_random_seed(1)
  loaded = checkpoints.load_model(path)
  for a, b in zip(_weights(model), _weights(loaded)):
    np.testing.assert_array_equal(a, b)
  # Seed 1 gives other weights: the equality above comes from the file.
  keras.utils.set_random_seed(1)
  other = checkpoints.build_model()
  assert any(not np.array_equal(a, b)
             for a, b in zip(_weights(model), _weights(other)))


def test_weights_load_into_a_mixed_bfloat16_model(tiny_config, tmp_path):
  model = checkpoints.build_model()
  path = str(tmp_path / "final.weights.h5")
  checkpoints.save_final_weights(model, path)
  loaded = checkpoints.load_model(path, mixed_precision=True)
  assert loaded.net_depth.compute_dtype == "bfloat16"
  assert loaded.net_albedo.compute_dtype == "bfloat16"
  # Variables stay float32 and hold the file's values exactly.
  for a, b in zip(model.variables, loaded.variables):
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # The policy was only for that model: the next one is float32 again.
  assert keras.mixed_precision.global_policy().name == "float32"
  assert checkpoints.build_model().net_depth.compute_dtype == "float32"


def test_final_weights_need_the_keras_suffix(tiny_config, tmp_path):
  model = checkpoints.build_model()
  with pytest.raises(ValueError, match=r"\.weights\.h5"):
    checkpoints.save_final_weights(model, str(tmp_path / "final.h5"))
  assert not os.listdir(tmp_path)


def test_the_newest_intact_checkpoint_skips_a_truncated_newer_one(
    tiny_config, tmp_path):
  model = checkpoints.build_model()
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       str(tmp_path), max_to_keep=None)
  older = manager.save(checkpoint_number=1)
  newer = manager.save(checkpoint_number=2)
  data = glob.glob(newer + ".data-*")[0]
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  prefix, problems = checkpoints.newest_intact_checkpoint(str(tmp_path))
  assert prefix == os.path.normpath(older)
  assert [p for p, _ in problems] == [os.path.normpath(newer)]
  assert "truncated or corrupt" in problems[0][1]


def test_a_checkpoint_without_the_confidence_net_is_refused(tiny_config,
                                                            tmp_path):
  saved = checkpoints.build_model(use_conf_map=False)
  prefix = tf.train.Checkpoint(model=saved).write(str(tmp_path / "ckpt-1"))
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.load_model(prefix)
  assert "Unsup3D.use_conf_map" in str(error.value)
  assert "net_conf" in str(error.value)


def test_final_weights_of_another_configuration_are_refused(tiny_config,
                                                            tmp_path):
  """A `.weights.h5` is held to every variable too: trained without the
  confidence net, it loads only into a model without one of the same zdim."""
  path = str(tmp_path / "final.weights.h5")
  checkpoints.save_final_weights(
      checkpoints.build_model(use_conf_map=False), path)
  with pytest.raises(checkpoints.CheckpointError,
                     match="does not fit the configured model"):
    checkpoints.load_model(path)  # the config has the confidence net
  gin.parse_config(["Unsup3D.use_conf_map = False"])
  assert checkpoints.load_model(path).net_conf is None  # the same config
  gin.parse_config(["Unsup3D.zdim = 32"])
  with pytest.raises(checkpoints.CheckpointError,
                     match="does not fit the configured model"):
    checkpoints.load_model(path)
