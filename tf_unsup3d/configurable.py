"""gin configuration for Keras classes."""

import functools
import inspect
import numbers

from absl import flags
import gin

from tf_unsup3d import gin_configs

# What a training config binds besides the model: the training loop, the
# synthetic data generator and the data pipeline. Programs that load a model
# from a training config skip the ones they do not import
# (`parse_gin_flags(skip_unknown=TRAINING_PIPELINE)`); one they import (the
# evaluation's `make_dataset`) keeps its bindings, checked like any other.
TRAINING_PIPELINE = ("train", "generate_synthetic", "make_dataset")


def _expected_type(default):
  """(accepted types, description) for a parameter, judged by its default.

  None for defaults that say nothing (None, no default, other objects).
  """
  if default is None or default is inspect.Parameter.empty:
    return None
  if isinstance(default, bool):
    return (bool,), "True or False"
  if isinstance(default, numbers.Integral):
    return (numbers.Integral,), "an integer"
  if isinstance(default, numbers.Real):
    return (numbers.Real,), "a number"
  if isinstance(default, str):
    return (str,), "a string"
  if isinstance(default, (tuple, list)):
    return (tuple, list), "a tuple or list"
  return None


def check_argument_types(name, signature, arguments):
  """Raises TypeError naming `name.param`, the value and the expected type.

  Args:
    name: the configurable's name, e.g. 'Unsup3D'.
    signature: its `inspect.Signature`.
    arguments: parameter name -> value, as given (gin bindings included).
      None is accepted for every parameter (it means "off" or "default").
  """
  for param, value in arguments.items():
    parameter = signature.parameters.get(param)
    expected = parameter and _expected_type(parameter.default)
    if expected is None or value is None:
      continue
    types, description = expected
    # bool is an int to Python, but True is no width and 1 no switch.
    if not isinstance(value, types) or (isinstance(value, bool) and
                                        bool not in types):
      raise TypeError(
          f"{name}.{param} = {value!r} ({type(value).__name__}): expected "
          f"{description}, like its default {parameter.default!r}. Fix the "
          "gin binding (--gin_param or the .gin file) or the argument.")


def keras_configurable(cls):
  """`@gin.configurable` for a Keras layer or model class.

  gin wraps `__init__` in a `(*args, **kwargs)` function; Keras reads the
  constructor's argument spec when it builds an object (for `get_config`)
  and fails on that wrapper. Restoring the signature keeps both working.

  Bindings are checked early: only the named constructor parameters are
  configurable (an allowlist, so gin rejects a typo such as `Unsup3D.nff`
  when it parses the config, although `__init__` takes `**kwargs` for
  Keras), and each value must have the type of its default
  (`check_argument_types`) when the object is built.
  """
  signature = inspect.signature(cls.__init__)
  init = cls.__init__

  @functools.wraps(init)
  def checked_init(self, *args, **kwargs):
    bound = signature.bind(self, *args, **kwargs)
    check_argument_types(cls.__name__, signature, bound.arguments)
    init(self, *args, **kwargs)

  cls.__init__ = checked_init
  named = [n for n, p in list(signature.parameters.items())[1:]
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  cls = gin.configurable(cls, allowlist=named)
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
