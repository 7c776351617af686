"""gin configuration for Keras classes."""

import inspect

from absl import flags
import gin

from tf_unsup3d import gin_configs


def keras_configurable(cls):
  """`@gin.configurable` for a Keras layer or model class.

  gin wraps `__init__` in a `(*args, **kwargs)` function; Keras reads the
  constructor's argument spec when it builds an object (for `get_config`)
  and fails on that wrapper. Restoring the signature keeps both working.
  """
  signature = inspect.signature(cls.__init__)
  cls = gin.configurable(cls)
  cls.__init__.__signature__ = signature
  return cls


def gin_flags():
  """The --gin_file and --gin_param flags, defined once for every CLI."""
  if "gin_file" not in flags.FLAGS:
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin config files: paths, or names of the bundled "
        f"configs ({', '.join(gin_configs.available())}).")
    flags.DEFINE_multi_string("gin_param", [],
                              "Gin bindings, e.g. 'train.num_epochs = 5'.")
  return flags.FLAGS


def parse_gin_flags(skip_unknown=()):
  """Parses the files and bindings given by `gin_flags`.

  Args:
    skip_unknown: configurable names that belong to programs not loaded here
      (e.g. `train` when evaluating with a training config); any other
      unknown name is still an error, so typos do not pass silently.
  """
  gin.parse_config_files_and_bindings([gin_configs.resolve(f)
                                       for f in flags.FLAGS.gin_file],
                                      flags.FLAGS.gin_param,
                                      skip_unknown=list(skip_unknown))
