"""Wall-clock timing of TensorFlow calls, shared by the benchmarks."""

import statistics
import time

import tensorflow as tf


def call_seconds(fn, steps):
  """Seconds of each of `steps` calls of `fn` after one untimed call.

  The untimed call traces and allocates. Every call's outputs (a nest of
  tensors) are copied to the host, so the time covers the work itself.
  """
  tf.nest.map_structure(lambda t: t.numpy(), fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn())
    times.append(time.perf_counter() - start)
  return times


def median_seconds(fn, steps):
  """Median seconds of `steps` calls of `fn` (`call_seconds`)."""
  return statistics.median(call_seconds(fn, steps))


def best_seconds(fn, steps):
  """Fewest seconds of `steps` calls of `fn` (`call_seconds`): the call
  least disturbed by other work on a shared machine."""
  return min(call_seconds(fn, steps))
