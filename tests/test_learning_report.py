"""The learning benchmark's numbers, event reading, plots and turntable."""

import csv
import math
import pathlib
import sys
import types

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

# benchmarks/ is not an installed package: import it from the repository.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks import learning_report  # noqa: E402  pylint: disable=g-import-not-at-top
from tf_unsup3d.rendering import renderer as renderer_lib  # noqa: E402
from tf_unsup3d.data import synthetic  # noqa: E402


def test_fit_line_matches_polyfit_and_corrcoef():
  rng = np.random.default_rng(0)
  true = rng.uniform(-0.5, 0.5, 200)
  predicted = 0.6 * true + 0.1 + rng.normal(0, 0.05, 200)
  fit = learning_report.fit_line(true, predicted)
  slope, intercept = np.polyfit(true, predicted, 1)
  assert fit["slope"] == pytest.approx(slope, rel=1e-9)
  assert fit["intercept"] == pytest.approx(intercept, rel=1e-9)
  assert fit["correlation"] == pytest.approx(
      np.corrcoef(true, predicted)[0, 1], rel=1e-9)
  assert fit["n"] == 200
  assert 0.55 < fit["slope"] < 0.65 and fit["correlation"] > 0.9
  # A sign flip shows as a negative slope and correlation.
  flipped = learning_report.fit_line(true, -predicted)
  assert flipped["slope"] == pytest.approx(-slope)
  assert flipped["correlation"] < -0.9


def test_fit_line_drops_non_finite_and_flags_degenerate_data():
  fit = learning_report.fit_line([0.0, 1.0, 2.0, np.nan], [1.0, 3.0, 5.0, 0.0])
  assert fit["n"] == 3 and fit["slope"] == pytest.approx(2.0)
  assert fit["intercept"] == pytest.approx(1.0)
  assert fit["correlation"] == pytest.approx(1.0)
  constant_true = learning_report.fit_line([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])
  assert math.isnan(constant_true["slope"])
  constant_prediction = learning_report.fit_line([0.0, 1.0, 2.0], [5.0] * 3)
  assert constant_prediction["slope"] == 0.0
  assert math.isnan(constant_prediction["correlation"])
  assert math.isnan(learning_report.fit_line([1.0], [1.0])["slope"])


def test_ratios_to_the_better_baseline():
  means = {"model": {"side": 0.01, "mad": 10.0},
           "null_depth": {"side": 0.02, "mad": 40.0},
           "average_gt_depth": {"side": 0.04, "mad": 20.0}}
  ratios = learning_report.ratios_to_better_baseline(means)
  assert ratios["model"] == pytest.approx({"side": 0.5, "mad": 0.5})
  assert ratios["null_depth"] == pytest.approx({"side": 1.0, "mad": 2.0})
  assert ratios["average_gt_depth"] == pytest.approx({"side": 2.0, "mad": 1.0})
  # The summarise_results layout (`*_mean` keys) gives the same ratios.
  results = {m: {"side": np.array([v["side"]] * 2),
                 "mad": np.array([v["mad"] - 1, v["mad"] + 1])}
             for m, v in means.items()}
  table = learning_report.summarise_results(results)
  assert table["model"]["n"] == 2 and table["model"]["mad_std"] == 1.0
  from_table = learning_report.ratios_to_better_baseline(table)
  for method, expected in ratios.items():
    assert from_table[method] == pytest.approx(expected)


def test_loss_shares_sum_to_one_and_follow_the_weights():
  weights = learning_report.loss_weights(lam_flip=0.5, lam_perc=0.0,
                                         lam_depth_sm=1.0)
  terms = {"photometric": 0.4, "photometric_flip": 0.4,
           "depth_smoothness": 0.02, "something_new": 3.0}
  shares = learning_report.loss_shares(terms, weights)
  assert set(shares) == {"photometric", "photometric_flip", "depth_smoothness"}
  assert sum(shares.values()) == pytest.approx(1.0)
  total = 0.4 + 0.5 * 0.4 + 1.0 * 0.02
  assert shares["photometric"] == pytest.approx(0.4 / total)
  assert shares["photometric_flip"] == pytest.approx(0.2 / total)
  assert shares["depth_smoothness"] == pytest.approx(0.02 / total)
  perceptual = learning_report.loss_shares(
      {"photometric": 1.0, "photometric_flip": 1.0, "perceptual": 2.0,
       "perceptual_flip": 2.0},
      learning_report.loss_weights(lam_flip=0.5, lam_perc=1.0,
                                   lam_depth_sm=0.0))
  assert perceptual["perceptual_flip"] == pytest.approx(1.0 / 4.5)
  assert sum(perceptual.values()) == pytest.approx(1.0)


def test_every_term_of_the_model_has_a_weight_that_rebuilds_the_total():
  """With every optional term on, the report's weights give the model's
  total: shares then cover the whole loss."""
  # pylint: disable-next=g-import-not-at-top
  from tf_unsup3d import model as model_lib
  model = model_lib.Unsup3D(
      nf=8, zdim=16, light_view_nf=4, use_conf_map=False, lam_perc=0.0,
      vgg_weights=None, lam_depth_sm=0.3, lam_depth_deviation=0.2,
      lam_multiscale=0.4, multiscale_factors=(2,), lam_rerender_view=2.0,
      rerender_canonical_depth=True)
  x = tf.random.uniform([2, 64, 64, 3], seed=3)
  terms = {k: float(v) for k, v in
           model.compute_losses(x, model(x, training=True)).items()}
  total = terms.pop("total")
  weights = learning_report.loss_weights(
      model.lam_flip, model.lam_perc, model.lam_depth_sm,
      model.lam_multiscale, model.lam_rerender_view,
      model.lam_depth_deviation)
  assert set(terms) <= set(weights)
  assert sum(weights[k] * v for k, v in terms.items()) == pytest.approx(
      total, rel=1e-5)


def test_rerendered_view_fits_compare_reads_with_rendered_views():
  # A stand-in model reads every rendered component at twice its size.
  class Reader:
    rerender_view_scale = 0.5

    def __call__(self, images):
      return {"n": len(images)}

    def read_rerendered_views(self, outputs, target):
      assert outputs["n"] == len(target) == 5
      assert np.all(np.abs(target) <= 0.5)
      return 2.0 * target, target

  fits = learning_report.rerendered_view_fits(
      Reader(), np.zeros((9, 8, 8, 3)), num_images=5)
  assert set(fits) == {"pitch", "yaw", "roll"}
  for fit in fits.values():
    assert fit["correlation"] == pytest.approx(1.0)
    assert fit["slope"] == pytest.approx(2.0)
    assert fit["n"] == 5


def test_relief_is_the_range_over_the_mask():
  depth = np.ones((3, 4, 4))
  depth[0, 1, 1], depth[0, 2, 2], depth[0, 0, 0] = 0.9, 1.05, 0.5
  mask = np.zeros((3, 4, 4))
  mask[0, 1:3, 1:3] = 1  # leaves out the 0.5 outside
  mask[1] = 1
  relief = learning_report.relief(depth, mask)
  assert relief[0] == pytest.approx(0.15)
  assert relief[1] == 0.0
  assert math.isnan(relief[2])  # empty mask


def test_mean_shape_scores_recover_a_shared_shape_from_varied_ones():
  s = 32
  r = renderer_lib.Renderer(image_size=s)
  y, x = np.mgrid[0:s, 0:s] / (s - 1) * 2 - 1
  r2 = x ** 2 + y ** 2
  template = np.where(r2 < 0.5, 1.0 - 0.08 * (1 - r2 / 0.5), 1.08)
  rng = np.random.default_rng(0)
  n = 6
  views = np.zeros((n, 6), np.float32)
  views[:, :2] = rng.uniform(-0.3, 0.3, (n, 2))  # pitch, yaw (radians)
  gt = r.warp_canon_depth(
      tf.constant(np.broadcast_to(template, (n, s, s)), tf.float32),
      tf.constant(views)).numpy()
  gt = np.where(gt > 1.07, 1.1, gt)  # background at the image's maximum
  # Per-face shapes that differ, with the template as their mean.
  noise = rng.normal(0, 0.01, (n, s, s))
  canon = template + noise - noise.mean(axis=0)
  got = learning_report.mean_shape_scores(r, gt, canon, views, batch_size=4)
  assert got["side"] < 1e-4 and got["mad"] < 0.5
  assert got["side_ratio"] < 0.02 and got["mad_ratio"] < 0.05
  # The same shape at the frontal view explains turned faces worse.
  frontal = learning_report.mean_shape_scores(r, gt, canon, 0 * views)
  assert frontal["side"] > 10 * got["side"] + 1e-3
  assert frontal["mad"] > got["mad"] + 2.0


def _write_views(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(synthetic.VIEW_COLUMNS)
    writer.writerows(rows)


def test_read_true_views_by_index(tmp_path):
  path = tmp_path / "views.csv"
  assert learning_report.read_true_views(str(path), [0]) is None
  rows = [[i, 0.1 * i, -0.2 * i, 0, 0, 0, 0, 0.5, 0.5, 0, 0] for i in range(5)]
  _write_views(path, rows[::-1])  # row order does not matter
  views = learning_report.read_true_views(str(path), [4, 0, 2])
  np.testing.assert_allclose(views["rx"], [0.4, 0.0, 0.2])
  np.testing.assert_allclose(views["ry"], [-0.8, 0.0, -0.4])
  with pytest.raises(ValueError, match="no rows"):
    learning_report.read_true_views(str(path), [7])


def _write_val_events(log_dir, values, step_offset=0):
  writer = tf.summary.create_file_writer(str(log_dir))
  with writer.as_default():
    for i, (side, mad) in enumerate(values):
      step = (i + 1) * 16 + step_offset
      tf.summary.scalar("val/side_model", side, step=step)
      tf.summary.scalar("val/mad_model", mad, step=step)
      tf.summary.scalar("val/side_null_depth", 0.019, step=step)
      tf.summary.scalar("val/mad_null_depth", 37.7, step=step)
      tf.summary.scalar("val/side_average_gt_depth", 0.02, step=step)
      tf.summary.scalar("val/mad_average_gt_depth", 35.0, step=step)
      tf.summary.scalar("loss/total", 1.0, step=step)
  writer.flush()
  writer.close()


def test_read_scalars_from_tf_summary_events(tmp_path):
  _write_val_events(tmp_path, [(0.025, 50.0), (0.021, 45.0), (0.018, 40.0)])
  curves = learning_report.read_scalars(str(tmp_path), "val/")
  assert "loss/total" not in curves and len(curves) == 6
  steps, values = curves["val/side_model"]
  np.testing.assert_array_equal(steps, [16, 32, 48])
  np.testing.assert_allclose(values, [0.025, 0.021, 0.018], rtol=1e-6)
  np.testing.assert_allclose(curves["val/mad_model"][1], [50, 45, 40])
  # A resumed run's writer (second event file) logs step 48 again and goes
  # on: the later value wins, steps stay sorted and unique.
  _write_val_events(tmp_path, [(0.017, 39.0), (0.016, 38.0)], step_offset=32)
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  steps, values = learning_report.read_scalars(str(tmp_path),
                                               "val/")["val/side_model"]
  np.testing.assert_array_equal(steps, [16, 32, 48, 64])
  np.testing.assert_allclose(values, [0.025, 0.021, 0.017, 0.016], rtol=1e-6)
  assert learning_report.read_scalars(str(tmp_path / "absent")) == {}


def test_read_scalars_reads_simple_values(tmp_path):
  """TF1-style events store scalars as `simple_value`, not tensors."""
  event = tf.compat.v1.Event(step=5, wall_time=1.0)
  event.summary.value.add(tag="val/side_model", simple_value=0.5)
  with tf.io.TFRecordWriter(
      str(tmp_path / "events.out.tfevents.1.test")) as writer:
    writer.write(event.SerializeToString())
  steps, values = learning_report.read_scalars(str(tmp_path))["val/side_model"]
  assert steps.tolist() == [5] and values.tolist() == [0.5]


def test_acceptance_and_resume():
  stage = lambda budget, side, mad: {"budget_minutes": budget,
                                     "ratio": {"side": side, "mad": mad}}
  checks = learning_report.acceptance([stage(15, 0.9, 0.9),
                                       stage(30, 0.7, 0.9)])
  assert [(c["minutes"], c["metric"], c["passed"]) for c in checks] == [
      (30, "side", True), (30, "mad", False)]
  previous = {"stages": [{"budget_minutes": 15, "steps": 10},
                         {"budget_minutes": 30, "steps": 20}]}
  assert len(learning_report.resume_stages(previous, [15, 30, 60])) == 2
  assert len(learning_report.resume_stages(previous, [15, 45])) == 1
  assert learning_report.resume_stages(previous, [20, 30]) == []
  assert learning_report.resume_stages(None, [15]) == []
  assert learning_report.json_safe({"a": [np.float32(1.5), math.nan]}) == {
      "a": [1.5, None]}


def _assert_png_has_content(path, min_size=(400, 300)):
  image = PIL.Image.open(path)
  assert image.format == "PNG"
  width, height = image.size
  assert width >= min_size[0] and height >= min_size[1], image.size
  pixels = np.asarray(image.convert("RGB"), np.float32)
  # Not blank: a fair share of non-white pixels, and many distinct colours.
  drawn = (pixels < 240).any(axis=-1).mean()
  assert drawn > 0.02, f"{path} is {100 * (1 - drawn):.1f}% white"
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_plot_learning_curve(tmp_path):
  _write_val_events(tmp_path / "val", [(0.025, 50.0), (0.021, 45.0),
                                       (0.018, 40.0)])
  curves = learning_report.read_scalars(str(tmp_path / "val"), "val/")
  path = learning_report.plot_learning_curve(
      str(tmp_path / "curve.png"), curves, [(32, "15 min")])
  _assert_png_has_content(path)
  # With no validation yet it still draws (a note), not an error.
  _assert_png_has_content(learning_report.plot_learning_curve(
      str(tmp_path / "empty.png"), {}))


def test_plot_budget_curve(tmp_path):
  path = learning_report.plot_budget_curve(
      str(tmp_path / "budget.png"), [15.2, 30.4, 60.1, 120.3],
      {"side": [0.95, 0.8, 0.6, 0.5], "mad": [0.97, 0.9, 0.8, 0.7]})
  _assert_png_has_content(path)


def test_plot_view_scatter(tmp_path):
  rng = np.random.default_rng(1)
  true = {"yaw": rng.uniform(-0.5, 0.5, 50), "pitch": rng.uniform(-0.17, 0.17,
                                                                  50)}
  predicted = {k: 0.7 * v + rng.normal(0, 0.03, 50) for k, v in true.items()}
  _assert_png_has_content(learning_report.plot_view_scatter(
      str(tmp_path / "views.png"), true, predicted))


def _bump_depth(count, size):
  y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
  bump = 1.0 - 0.08 * np.exp(-(x ** 2 + y ** 2) / 0.3)
  return np.repeat(bump[None], count, axis=0).astype(np.float32)


def test_plot_faces(tmp_path):
  k, s = 3, 16
  rng = np.random.default_rng(2)
  gt = _bump_depth(k, s)
  gt[:, :, :3] = gt[:, :, -3:] = 1.1  # background at the maximum
  faces = {"image": rng.uniform(0, 1, (k, s, s, 3)),
           "canon_depth": _bump_depth(k, s),
           "canon_shading": rng.uniform(0, 1, (k, s, s)),
           "recon_depth": gt + rng.normal(0, 0.005, gt.shape),
           "recon_mask": np.ones((k, s, s)), "gt_depth": gt}
  depth_range = learning_report.depth_colour_range(gt, (0.9, 1.2))
  assert 0.9 <= depth_range[0] < 0.93 and 1.0 < depth_range[1] < 1.05
  path = learning_report.plot_faces(str(tmp_path / "faces.png"), faces,
                                    depth_range, ["a", "b", "c"])
  _assert_png_has_content(path, min_size=(1200, 500))


def test_turntable_frames_lay_out_input_texture_and_shape(tmp_path):
  s, k = 16, 2
  renderer = renderer_lib.Renderer(image_size=s)
  depth = _bump_depth(k, s)
  texture = np.random.default_rng(3).uniform(0.2, 1, (k, s, s, 3)).astype(
      np.float32)
  outputs = {"canon_depth": depth, "canon_image": texture,
             "canon_normal": renderer.normals_from_depth(depth).numpy()}
  images = np.zeros((k, s, s, 3), np.float32)
  frames = learning_report.turntable_frames(renderer.render_yaw, images,
                                            outputs, num_frames=4, zoom=1)
  pad = 2
  assert frames.shape == (4, 3 * (s + pad) + pad, k * (s + pad) + pad, 3)
  # Frame 0 is yaw 0, the identity view: row 1 shows the texture itself.
  y, x = pad + (s + pad), pad + (s + pad)  # row 1, column 1 (second face)
  np.testing.assert_allclose(frames[0, y + 3:y + s - 3, x + 3:x + s - 3],
                             texture[1, 3:-3, 3:-3], atol=2 / 255)
  assert (frames[0, pad:pad + s, pad:pad + s] == 0).all()  # row 0: input
  path = learning_report.write_turntable(str(tmp_path / "t.gif"), frames)
  gif = PIL.Image.open(path)
  assert gif.format == "GIF" and gif.n_frames == 4


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))


def test_factor_explainers_name_the_predicted_factor_that_follows_the_truth():
  rng = np.random.default_rng(0)
  n = 400
  true = {name: rng.uniform(-1, 1, n) for name in learning_report.TRUE_FACTORS}
  predicted = {name: rng.normal(size=n)
               for name in learning_report.PREDICTED_FACTORS}
  # A turned face explained by a side light; the pitch learnt as itself.
  predicted["light_dx"] = -0.5 * true["yaw"] + 0.05 * rng.normal(size=n)
  predicted["pitch"] = 2.0 * true["pitch"]
  table = learning_report.factor_explainers(true, predicted)
  assert table["yaw"]["strongest"] == "light_dx"
  assert table["yaw"]["correlation"] == pytest.approx(
      np.corrcoef(true["yaw"], predicted["light_dx"])[0, 1])
  assert table["yaw"]["correlation"] < -0.9
  assert abs(table["yaw"]["own"]) < 0.2
  assert table["pitch"]["strongest"] == "pitch"
  assert table["pitch"]["own"] == pytest.approx(1.0)
  # A constant prediction has no correlation and is never the strongest.
  table = learning_report.factor_explainers(
      {"yaw": true["yaw"]}, {"yaw": np.zeros(n), "tx": true["yaw"]})
  assert table["yaw"]["strongest"] == "tx"
  assert math.isnan(table["yaw"]["own"])


def _stage(**extra):
  """A minimal stage record as `learning.py` writes it."""
  stage = {"budget_minutes": 30, "train_minutes": 30.0, "stage_minutes": 30.0,
           "steps": 100, "epochs": 1, "images_per_second": 10.0,
           "num_test_images": 4, "test": {}, "view": None,
           "view_note": "no views.csv",
           "relief": {k: 0.1 for k in ("canonical_on_gt_face", "gt_on_gt_face",
                                       "recon_on_eval_mask",
                                       "gt_on_eval_mask")},
           "loss_shares": {"photometric": 1.0}}
  stage.update(extra)
  return stage


def test_format_stage_reports_views_and_explainers_only_when_measured():
  fit = {"correlation": 0.5, "slope": 0.25, "intercept": 0.0, "n": 4}
  explainers = {"yaw": {"own": 0.1, "strongest": "light_dx",
                        "correlation": -0.6}}
  text = learning_report.format_stage(
      _stage(view={"yaw": fit}, explainers=explainers))
  assert "view (predicted vs true): yaw r 0.50, slope 0.25" in text
  assert "yaw <- light_dx r -0.60 (own 0.10)" in text
  assert "view: " not in text
  # A stage recorded before the explainers existed: views, no explainer line.
  text = learning_report.format_stage(_stage(view={"yaw": fit}))
  assert "yaw r 0.50" in text
  assert "strongest predicted factor" not in text and "view: " not in text
  text = learning_report.format_stage(_stage())
  assert "view: no views.csv" in text
  assert "strongest predicted factor" not in text
  assert "re-renderings" not in text  # a stage recorded before the line
  text = learning_report.format_stage(_stage(rerendered_view={"yaw": fit}))
  assert ("view network on re-renderings of its own factors (read vs "
          "rendered): yaw r 0.50, slope 0.25") in text


def test_format_stage_reports_the_relief_fit_only_when_measured():
  relief = np.array([0.05, 0.08, 0.11])
  fit = learning_report.fit_line(relief, 2 * relief + 0.01)
  text = learning_report.format_stage(_stage(relief_fit=fit))
  assert ("canonical relief per face against the g.t.'s: r 1.00, slope "
          "2.00") in text
  assert "canonical relief per face" not in learning_report.format_stage(
      _stage())


def test_kernel_rms_per_network_skips_biases_and_absent_networks():
  layers = tf.keras.layers
  depth = tf.keras.Sequential([layers.Conv2D(2, 3),
                               layers.Conv2D(1, 1, use_bias=True)])
  depth.build([None, 8, 8, 3])
  first, second = depth.layers
  first.kernel.assign(np.full(first.kernel.shape, 3.0, np.float32))
  signs = np.where(np.arange(2) % 2, 2.0, -2.0).reshape(second.kernel.shape)
  second.kernel.assign(signs.astype(np.float32))
  second.bias.assign(np.full(second.bias.shape, 100.0, np.float32))
  view = layers.Dense(4)
  view.build([None, 5])
  view.kernel.assign(np.zeros(view.kernel.shape, np.float32))
  model = types.SimpleNamespace(net_depth=depth, net_view=view, net_conf=None)
  got = learning_report.kernel_rms(model)
  assert set(got) == {"net_depth", "net_view"}
  assert got["net_depth"]["min"] == pytest.approx(2.0)
  assert got["net_depth"]["median"] == pytest.approx(2.5)  # of 3 and 2
  assert got["net_view"] == {"min": 0.0, "median": 0.0}
  text = learning_report.format_stage(_stage(kernel_rms=got))
  assert ("kernel RMS per network (min / median over its convolutions): "
          "depth 2.0000 / 2.5000, view 0.0000 / 0.0000") in text
  assert "kernel RMS" not in learning_report.format_stage(_stage())


def test_light_strengths_count_diffuse_at_the_low_end_as_off():
  light = np.array([[0.5, 0.0, 0.1, 0.0], [0.7, 0.011, 0.0, 0.0],
                    [0.3, 0.5, 0.0, 0.0], [0.5, 0.9, 0.0, 0.0]])
  got = learning_report.light_strengths(light, (0.0, 0.5))
  assert got["ambient"] == pytest.approx(0.5)
  assert got["diffuse"] == pytest.approx(1.411 / 4)
  assert got["diffuse_off"] == pytest.approx(0.25)  # 0.011 > 2% of 0.5
  # The range's low end counts, not zero.
  got = learning_report.light_strengths(light + [0, 0.2, 0, 0], (0.2, 1.2))
  assert got["diffuse_off"] == pytest.approx(0.5)  # 0.2 and 0.211 <= 0.22
  text = learning_report.format_stage(_stage(light=got))
  assert ("light (test mean): ambient 0.50, diffuse 0.55; diffuse off "
          "(within 2% of its range's low end) in 50% of the images") in text
  assert "light (test mean)" not in learning_report.format_stage(_stage())
