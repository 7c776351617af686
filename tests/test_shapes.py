"""shapes.check_shape: which static shapes pass, and what a refusal says."""

import itertools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import shapes


def _refusal(value, *args, **kwargs):
  with pytest.raises(ValueError) as error:
    shapes.check_shape(value, *args, **kwargs)
  return str(error.value)


def test_refusal_names_the_argument_the_expected_and_the_got_shape():
  message = _refusal(tf.zeros([1, 32, 32, 3]), "images", ("B", 64, 64, 3),
                     "RGB")
  assert message == ("images must be [B, 64, 64, 3] RGB, got shape "
                     "(1, 32, 32, 3).")
  message = _refusal(np.zeros((64, 64, 3)), "images", ("N", 64, 64, 3))
  assert message == "images must be [N, 64, 64, 3], got shape (64, 64, 3)."


def test_named_axes_take_any_size_and_only_fix_the_rank():
  for size in (1, 5, 64):
    shapes.check_shape(np.zeros((2, size, 7)), "depth", ("B", "H", "W"))
  assert "got shape (2, 5)" in _refusal(np.zeros((2, 5)), "depth",
                                        ("B", "H", "W"))
  assert "got shape (2, 5, 7, 1)" in _refusal(np.zeros((2, 5, 7, 1)), "depth",
                                              ("B", "H", "W"))


def _spec(sizes):
  """A static shape as a tf.function input signature sees it."""
  seen = []

  @tf.function(input_signature=[tf.TensorSpec(sizes, tf.float32)])
  def trace(x):
    seen.append(x)
    return x

  trace.get_concrete_function()
  return seen[0]


def test_unknown_sizes_fail_unless_allowed_and_unknown_rank_always_fails():
  traced = _spec([None, None, None, 3])
  message = _refusal(traced, "images", ("B", 64, 64, 3))
  assert "[B, 64, 64, 3]" in message and "(None, None, None, 3)" in message
  shapes.check_shape(traced, "images", ("B", 64, 64, 3), unknown_ok=True)
  shapes.check_shape(traced, "images", ("B", "H", "W", 3))  # named: any size
  unranked = _spec(None)
  for unknown_ok in (False, True):
    assert "<unknown>" in _refusal(unranked, "images", ("B", "H", "W", 3),
                                   unknown_ok=unknown_ok)


def test_keras_symbolic_tensors_are_checked_like_tensors():
  shapes.check_shape(keras.Input((64, 64, 3)), "x", ("B", 64, 64, "C"))
  assert "must be [B, 64, 64, C]" in _refusal(keras.Input((32, 64, 3)), "x",
                                              ("B", 64, 64, "C"))


@pytest.mark.parametrize("unknown_ok", [False, True])
def test_agrees_with_tensorshape_compatibility(unknown_ok):
  """Every shape of rank 1-3 over sizes {unknown, 1, 2} against every
  expected shape of rank 1-3 over {named, 1, 2}: a shape passes exactly when
  TensorFlow calls it compatible with the expected one (named axes unknown),
  and, unless unknown_ok, has a known size wherever a size is expected."""
  sizes = (None, 1, 2)
  wanted = ("H", 1, 2)
  for rank, expected_rank in itertools.product((1, 2, 3), repeat=2):
    for got in itertools.product(sizes, repeat=rank):
      value = _Shaped(tf.TensorShape(got))
      for expected in itertools.product(wanted, repeat=expected_rank):
        reference = tf.TensorShape(
            [None if isinstance(e, str) else e for e in expected])
        passes = value.shape.is_compatible_with(reference) and (
            unknown_ok or all(g is not None for g, e in zip(got, expected)
                              if not isinstance(e, str)))
        if passes:
          shapes.check_shape(value, "v", expected, unknown_ok=unknown_ok)
        else:
          message = _refusal(value, "v", expected, unknown_ok=unknown_ok)
          assert re.fullmatch(r"v must be \[.*\], got shape .*\.", message)


class _Shaped:
  """Stands in for a tensor of a given static shape (no graph needed)."""

  def __init__(self, shape):
    self.shape = shape


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
