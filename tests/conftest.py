"""Shared pytest set-up: quiet TensorFlow logs, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs, so MirroredStrategy can be tested with two replicas. Must
# happen before TensorFlow initialises its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _seed():
  """Every test starts from the same random state.

  `keras.utils.set_random_seed` seeds Python, NumPy, TensorFlow and Keras'
  own initialiser seed generator; `tf.random.set_seed` alone does not reach
  the last, so weights would depend on which tests ran before.
  """
  keras.utils.set_random_seed(0)
  yield


@pytest.fixture(scope="module")
def tiny_model():
  """A built 64-px `Unsup3D` with tiny widths and random weights, no VGG."""
  from tf_unsup3d import model as model_lib  # pylint: disable=g-import-not-at-top
  tf.random.set_seed(0)
  model = model_lib.Unsup3D(nf=8, zdim=16, light_view_nf=8, conf_zdim=16,
                            lam_perc=0.0)
  model.build((None, 64, 64, 3))
  return model
