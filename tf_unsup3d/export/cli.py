"""The export programs' shared opening: gin flags, required flags, model."""

from absl import app
from absl import flags

from tf_unsup3d import checkpoints
from tf_unsup3d import configurable


def load_model_from_flags(*required):
  """The model named by --checkpoint, configured by the gin flags.

  Parses --gin_file and --gin_param (skipping the training pipeline's
  bindings), checks that --checkpoint and the `required` flags are given,
  then loads with `checkpoints.load_model`.

  Args:
    *required: names of the program's other required flags, e.g. "output".

  Raises:
    app.UsageError: --checkpoint or a `required` flag is missing.
  """
  configurable.parse_gin_flags(skip_unknown=configurable.TRAINING_PIPELINE)
  names = ("checkpoint",) + required
  if not all(flags.FLAGS[name].value for name in names):
    raise app.UsageError(" and ".join(f"--{name}" for name in names) +
                         " are required.")
  return checkpoints.load_model(flags.FLAGS.checkpoint)
