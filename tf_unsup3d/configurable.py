"""gin configuration for Keras classes."""

import inspect

import gin


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
