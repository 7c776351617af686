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
  gt = tilted_plane(r, n, 0.85)
  gt[:, :3] = gt.max() + 0.1  # background strip, at the image's maximum
  gt = tf.constant(gt[None], tf.float32)
  reference = tf.fill([S, S], 1.0)
  # A scaled copy: covered wherever the ground truth's foreground is (the
  # scaled background lies beyond far_depth).
  recon = gt * 1.1
  assert float(tf.reduce_max(recon[0, :, 3:])) < r.far_depth
  scores = evaluate.score_batch(r, gt, recon, reference)
  model = scores["model"]
  assert float(model["side"][0]) == pytest.approx(0.0, abs=1e-4)  # scale inv.
  assert float(model["mad"][0]) == pytest.approx(0.0, abs=0.1)
  # The reference's acos reads identical directions as a small angle,
  # because its normals are slightly shorter than unit.
  assert 0.1 < float(model["mad_acos"][0]) < 10.0
  # A constant map is fronto-parallel: every normal is (0, 0, 1).
  null = scores["null_depth"]
  assert float(null["mad"][0]) == pytest.approx(math.degrees(0.5), abs=0.1)
  assert float(null["mad_acos"][0]) >= float(null["mad"][0]) - 1e-3
  mask = np.zeros((S, S), bool)
  mask[1:-1, 4:-1] = True  # foreground eroded by one pixel, image border too
  log_gt = np.log(gt.numpy()[0][mask])
  assert float(null["side"][0]) == pytest.approx(np.std(log_gt), rel=1e-3)
  # The average map here is constant too: same scores as null depth.
  for key in evaluate.METRICS:
    np.testing.assert_allclose(scores["average_gt_depth"][key].numpy(),
                               null[key].numpy(), rtol=1e-5)


def test_scored_pixels_are_those_the_original_branch_covers():
  r = Renderer(image_size=S)
  n = np.array([0.0, math.sin(0.5), math.cos(0.5)])
  gt = tf.constant(tilted_plane(r, n, 0.85)[None], tf.float32)
  gt = tf.concat([gt, tf.fill([1, S, 1], 2.0)], axis=2)[:, :, 1:]  # bg column
  recon = gt.numpy().copy()
  recon[0, :, :6] = r.far_depth  # the prediction does not reach these columns
  scores = evaluate.score_batch(r, gt, tf.constant(recon), tf.fill([S, S], 1.))
  mask = np.zeros((S, S), bool)
  mask[1:-1, 7:-2] = True  # each mask eroded by one pixel
  log_gt = np.log(gt.numpy()[0][mask])
  assert float(scores["null_depth"]["side"][0]) == pytest.approx(
      np.std(log_gt), rel=1e-3)


def test_average_depth_is_the_per_pixel_mean():
  maps = np.stack([np.full((S, S), 1.0), np.full((S, S), 1.1),
                   np.full((S, S), 0.9)]).astype(np.float32)
  maps[0, 0, 0] = 2.0
  dataset = tf.data.Dataset.from_tensor_slices({"depth": maps}).batch(2)
  mean = evaluate.average_depth(dataset).numpy()
  np.testing.assert_allclose(mean[1:, 1:], 1.0, atol=1e-6)
  assert mean[0, 0] == pytest.approx((2.0 + 1.1 + 0.9) / 3)


def test_table_and_csv(tmp_path):
  results = {m: {"side": np.array([0.01, 0.03]), "mad": np.array([10., 20.]),
                 "mad_acos": np.array([12., 24.])}
             for m in evaluate.METHODS}
  table = evaluate.format_table(results)
  assert "2.000 +-  1.000" in table and "15.00 +-   5.00" in table
  assert "18.00 +-   6.00" in table and "MAD-acos" in table
  path = str(tmp_path / "scores.csv")
  evaluate.write_scores(path, results)
  lines = open(path).read().splitlines()
  assert lines[0].startswith("index,model_side,model_mad,model_mad_acos")
  assert len(lines) == 3 and lines[2].split(",")[3] == "24.000000"


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
