"""Evaluation: the model and both baselines scored on hand-made depth maps."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import evaluate
from tf_unsup3d.rendering import Renderer

S = 16


def tilted_plane(renderer, normal, distance):
  """Depth of the plane n . P = distance along each pixel ray."""
  f, c = renderer.focal[0], renderer.principal_point[0]
  v, u = np.mgrid[0:S, 0:S]
  ray = np.stack([(u - c) / f, (v - c) / f, np.ones((S, S))], -1)
  return distance / (ray @ normal)


def test_scores_against_analytic_values():
  r = Renderer(image_size=S)
  n = np.array([0.0, math.sin(0.5), math.cos(0.5)])
  gt = tilted_plane(r, n, 1.0)
  gt[:, :3] = gt.max() + 0.1  # background strip, at the image's maximum
  gt = tf.constant(gt[None], tf.float32)
  covered = tf.ones([1, S, S])
  reference = tf.fill([S, S], 1.0)
  scores = evaluate.score_batch(r, gt, gt * 1.3, covered, reference)
  side, mad = scores["model"]
  assert float(side[0]) == pytest.approx(0.0, abs=1e-4)  # scale invariant
  assert float(mad[0]) == pytest.approx(0.0, abs=0.1)
  # A constant map is fronto-parallel: every normal is (0, 0, 1).
  side, mad = scores["null_depth"]
  assert float(mad[0]) == pytest.approx(math.degrees(0.5), abs=0.1)
  mask = np.zeros((S, S), bool)
  mask[1:-1, 4:-1] = True  # foreground eroded by one pixel, image border too
  log_gt = np.log(gt.numpy()[0][mask])
  assert float(side[0]) == pytest.approx(np.std(log_gt), rel=1e-3)
  # The average map here is constant too: same scores as null depth.
  np.testing.assert_allclose(scores["average_gt_depth"][0].numpy(),
                             scores["null_depth"][0].numpy(), rtol=1e-5)


def test_average_depth_is_the_per_pixel_mean():
  maps = np.stack([np.full((S, S), 1.0), np.full((S, S), 1.1),
                   np.full((S, S), 0.9)]).astype(np.float32)
  maps[0, 0, 0] = 2.0
  dataset = tf.data.Dataset.from_tensor_slices({"depth": maps}).batch(2)
  mean = evaluate.average_depth(dataset).numpy()
  np.testing.assert_allclose(mean[1:, 1:], 1.0, atol=1e-6)
  assert mean[0, 0] == pytest.approx((2.0 + 1.1 + 0.9) / 3)


def test_table_and_csv(tmp_path):
  results = {m: {"side": np.array([0.01, 0.03]), "mad": np.array([10., 20.])}
             for m in evaluate.METHODS}
  table = evaluate.format_table(results)
  assert "2.000 +- 1.000" in table and "15.00 +- 5.00" in table
  path = str(tmp_path / "scores.csv")
  evaluate.write_scores(path, results)
  lines = open(path).read().splitlines()
  assert lines[0].startswith("index,model_side,model_mad") and len(lines) == 3


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
