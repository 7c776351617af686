"""The full model: shapes and ranges, symmetry, gradients, compilation."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import losses
from tf_unsup3d import model as model_lib

S = 64


def tiny_model(**kwargs):
  """The paper's architecture at a width that runs in a second on a CPU."""
  config = dict(nf=8, zdim=16, light_view_nf=4, conf_zdim=16,
                vgg_weights=None)
  config.update(kwargs)
  return model_lib.Unsup3D(**config)


def images(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return tf.constant(rng.uniform(0, 1, (batch, S, S, 3)).astype(np.float32))


def symmetric(x):
  """Averages `[B, H, W, ...]` with its horizontal mirror image."""
  return (x + tf.reverse(x, axis=[2])) / 2.0


def test_outputs_have_documented_shapes_and_ranges():
  model = tiny_model()
  out = model(images(), training=False)
  expected = {
      "canon_depth": (2, S, S), "canon_depth_unbordered": (2, S, S),
      "canon_albedo": (2, S, S, 3),
      "canon_normal": (2, S, S, 3), "canon_diffuse_shading": (2, S, S, 1),
      "canon_image": (2, S, S, 3), "light": (2, 4), "light_direction": (2, 3),
      "view": (2, 6), "conf_sigma_l1": (2, S, S, 2),
      "conf_sigma_perc": (2, S // 4, S // 4, 2), "recon_image": (2, S, S, 3),
      "recon_image_flip": (2, S, S, 3), "recon_depth": (2, S, S),
      "recon_depth_flip": (2, S, S), "recon_mask": (2, S, S)}
  assert {k: tuple(v.shape) for k, v in out.items()} == expected
  depth = out["canon_depth"].numpy()
  border = 0.7 * 1.1 + 0.3 * 0.9
  np.testing.assert_allclose(depth[:, :, [0, 1, -2, -1]], border, rtol=1e-6)
  np.testing.assert_array_equal(out["canon_depth_unbordered"][:, :, 2:-2],
                                depth[:, :, 2:-2])
  assert depth.min() >= 0.9 - 1e-6 and depth.max() <= 1.1 + 1e-6
  # Like the reference, normals are divided by (|n| + 1e-7) and |tu x tv| is
  # only ~3e-5 at this focal length, so their norm is just below one.
  np.testing.assert_allclose(
      np.linalg.norm(out["canon_normal"].numpy(), axis=-1), 1.0, atol=5e-3)
  np.testing.assert_allclose(
      np.linalg.norm(out["light_direction"].numpy(), axis=-1), 1.0, atol=1e-6)
  light = out["light"].numpy()
  assert (light[:, :2] >= 0).all() and (light[:, :2] <= 1).all()
  view = out["view"].numpy()
  assert (np.abs(view[:, :3]) <= np.radians(60) + 1e-6).all()
  assert (np.abs(view[:, 3:]) <= 0.1 + 1e-6).all()
  assert set(np.unique(out["recon_mask"].numpy())) <= {0.0, 1.0}
  assert (out["conf_sigma_l1"].numpy() > 0).all()
  recon_depth = out["recon_depth"].numpy()
  assert recon_depth.min() >= 0.8 - 1e-6 and recon_depth.max() <= 1.2 + 1e-6


def test_outputs_are_the_documented_ones():
  """`model.OUTPUTS` names every output of `call` with its shape, `FACTORS`
  every output of `canonical_factors`; the confidence maps only with
  use_conf_map."""
  sizes = {"B": 2, "S": S, "S/4": S // 4}
  shape = lambda text: tuple(int(d) if d.isdigit() else sizes[d]
                             for d in text.strip("[]").split(", "))
  model = tiny_model()
  x = images()
  for outputs, documented in ((model(x), model_lib.OUTPUTS),
                              (model.canonical_factors(x), model_lib.FACTORS)):
    assert ({k: tuple(v.shape) for k, v in outputs.items()} ==
            {k: shape(text) for k, (text, _) in documented.items()})
  without = tiny_model(use_conf_map=False)(x)
  assert set(model_lib.OUTPUTS) - set(without) == {"conf_sigma_l1",
                                                   "conf_sigma_perc"}


def test_canonical_factors_are_the_first_half_of_call():
  """The inference half (no rasteriser) gives `call`'s canonical outputs."""
  model = tiny_model()
  x = images()
  full = model(x, training=False)
  half = model.canonical_factors(x)
  assert set(half) == {"canon_depth", "canon_albedo", "canon_normal",
                       "canon_diffuse_shading", "canon_image", "light",
                       "light_direction", "view"}
  for key, value in half.items():
    np.testing.assert_allclose(value.numpy(), full[key].numpy(), atol=1e-6,
                               err_msg=key)


def test_bad_input_shape_names_the_expected_shape():
  model = tiny_model()
  with pytest.raises(ValueError, match=r"\[B, 64, 64, 3\]"):
    model(tf.zeros([1, 32, 32, 3]))
  with pytest.raises(ValueError, match="image_size"):
    tiny_model(image_size=32)


def test_uint8_input_equals_float_input():
  model = tiny_model(use_conf_map=False)
  x = np.random.default_rng(1).integers(0, 256, (1, S, S, 3), dtype=np.uint8)
  a = model(tf.constant(x))["recon_image"]
  b = model(tf.constant(x.astype(np.float32) / 255.0))["recon_image"]
  np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_symmetric_factors_at_zero_view_give_identical_reconstructions():
  """Mirrored factors equal the originals, so both branches must agree, and a
  light with dx = 0 keeps the reconstruction itself mirror-symmetric."""
  model = tiny_model()
  rng = np.random.default_rng(2)
  smooth = tf.image.resize(rng.normal(size=(2, 8, 8, 1)), [S, S])[..., 0]
  depth = symmetric(model._canonical_depth(tf.cast(smooth, tf.float32))[1])
  albedo = symmetric(tf.constant(rng.uniform(-1, 1, (2, S, S, 3)), tf.float32))
  light = tf.constant([[0.2, 0.5, 0.0, 0.4], [-0.3, 0.9, 0.0, -0.2]])
  out = model.reconstruct(depth, albedo, light, tf.zeros([2, 6]))
  np.testing.assert_allclose(out["recon_image"].numpy(),
                             out["recon_image_flip"].numpy(), atol=1e-6)
  recon = out["recon_image"].numpy()[:, :, 2:-2]  # border columns are fixed
  np.testing.assert_allclose(recon, recon[:, :, ::-1], atol=1e-5)
  # Zero view: the reconstruction is the canonical image, away from the border.
  np.testing.assert_allclose(out["recon_image"].numpy()[:, 2:-2, 2:-2],
                             out["canon_image"].numpy()[:, 2:-2, 2:-2],
                             atol=1e-5)


def test_mirrored_branch_renders_the_mirrored_factors():
  """With zero view, the flipped reconstruction is the mirror image of the
  canonical image rendered from mirrored depth and albedo."""
  model = tiny_model()
  rng = np.random.default_rng(3)
  smooth = tf.image.resize(rng.normal(size=(1, 8, 8, 1)), [S, S])[..., 0]
  depth = model._canonical_depth(tf.cast(smooth, tf.float32))[1]
  albedo = tf.constant(rng.uniform(-1, 1, (1, S, S, 3)), tf.float32)
  light = tf.constant([[0.0, 0.5, 0.0, 0.3]])  # dx = 0: mirror-invariant light
  out = model.reconstruct(depth, albedo, light, tf.zeros([1, 6]))
  mirrored = model.reconstruct(tf.reverse(depth, [2]), tf.reverse(albedo, [2]),
                               light, tf.zeros([1, 6]))
  np.testing.assert_allclose(out["recon_image_flip"].numpy(),
                             mirrored["recon_image"].numpy(), atol=1e-6)


def test_losses_combine_with_the_paper_weights():
  model = tiny_model(lam_perc=0.7, lam_flip=0.3, lam_depth_sm=0.2)
  x = images()
  out = model(x)
  terms = {k: float(v) for k, v in model.compute_losses(x, out).items()}
  expected = (terms["photometric"] + 0.3 * terms["photometric_flip"] +
              0.7 * (terms["perceptual"] + 0.3 * terms["perceptual_flip"]) +
              0.2 * terms["depth_smoothness"])
  assert terms["total"] == pytest.approx(expected, rel=1e-6)
  lam1 = float(model.compute_losses(x, out, lam_flip=1.0)["total"])
  assert lam1 == pytest.approx(
      expected + 0.7 * terms["photometric_flip"] +
      0.7 * 0.7 * terms["perceptual_flip"], rel=1e-5)


def test_depth_smoothness_order_selects_the_prior():
  x = images()
  first = tiny_model(lam_perc=0.0, lam_depth_sm=0.2)
  out = first(x)
  second = tiny_model(lam_perc=0.0, lam_depth_sm=0.2, depth_smoothness_order=2)
  second(x)
  second.set_weights(first.get_weights())
  terms = second.compute_losses(x, second(x))
  assert float(terms["depth_smoothness"]) == pytest.approx(float(
      losses.depth_smoothness(out["canon_depth_unbordered"], 0.9, 1.1,
                              order=2)), rel=1e-5)
  with pytest.raises(ValueError, match="depth_smoothness_order"):
    tiny_model(depth_smoothness_order=0)


def test_depth_deviation_term_joins_the_total_with_its_weight():
  x = tf.concat([images(), tf.reverse(images(), axis=[1])], axis=0)
  base = tiny_model(lam_perc=0.0, use_conf_map=False)
  out = base(x)
  model = tiny_model(lam_perc=0.0, use_conf_map=False,
                     lam_depth_deviation=2.5)
  model(x)
  model.set_weights(base.get_weights())
  terms = model.compute_losses(x, out)
  expected = losses.depth_deviation(out["canon_depth_unbordered"], 0.9, 1.1)
  assert float(terms["depth_deviation"]) == pytest.approx(float(expected),
                                                          rel=1e-5)
  assert float(expected) > 0
  assert float(terms["total"]) == pytest.approx(
      float(base.compute_losses(x, out)["total"]) + 2.5 * float(expected),
      rel=1e-5)
  with pytest.raises(ValueError, match="lam_depth_deviation"):
    tiny_model(lam_depth_deviation=-1.0)


def test_no_perceptual_terms_and_no_vgg_without_lam_perc():
  model = tiny_model(lam_perc=0.0, use_conf_map=False)
  x = images()
  out = model(x)
  assert "conf_sigma_l1" not in out and model.vgg is None
  terms = model.compute_losses(x, out)
  assert set(terms) == {"total", "photometric", "photometric_flip"}


def test_every_network_receives_a_gradient():
  model = tiny_model(lam_perc=1.0, lam_depth_sm=0.1)
  x = images()
  with tf.GradientTape() as tape:
    total = model.compute_losses(x, model(x, training=True))["total"]
  variables = model.trainable_variables
  grads = tape.gradient(total, variables)
  for net in (model.net_depth, model.net_albedo, model.net_light,
              model.net_view, model.net_conf):
    names = {v.path for v in net.trainable_variables}
    net_grads = [g for v, g in zip(variables, grads) if v.path in names]
    assert net_grads and all(g is not None for g in net_grads), net.name
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in net_grads) > 0, net.name
  assert not model.vgg.trainable_variables  # frozen


def test_flat_depth_init_starts_flat_and_facing_the_camera():
  model = tiny_model(flat_depth_init=True, lam_depth_sm=0.1)
  x = images()
  with tf.GradientTape() as tape:
    outputs = model(x, training=True)
    total = model.compute_losses(x, outputs)["total"]
  mid = (model.min_depth + model.max_depth) / 2
  np.testing.assert_allclose(outputs["canon_depth_unbordered"], mid, atol=1e-6)
  # A flat depth's normals are all along the optical axis in the interior,
  # away from the border columns and the image edge (their length is a
  # little under 1: the normalisation's epsilon against tiny cross products).
  normal = outputs["canon_normal"].numpy()[:, 3:-3, 3:-3]
  np.testing.assert_allclose(normal[..., :2], 0.0, atol=1e-6)
  assert np.all(normal[..., 2] > 0.99)
  # Only the zeroed last convolution learns at the first step: everything
  # before it is multiplied by its zero kernel.
  variables = model.net_depth.trainable_variables
  grads = tape.gradient(total, variables)
  assert float(tf.reduce_sum(tf.abs(grads[-1]))) > 0, variables[-1].path
  assert all(float(tf.reduce_sum(tf.abs(g))) == 0 for g in grads[:-1])


def test_symmetric_depth_mirrors_the_depth_networks_output():
  x = images()
  plain = tiny_model(use_conf_map=False)
  mirrored = tiny_model(use_conf_map=False, symmetric_depth=True)
  plain(x)
  mirrored(x)
  mirrored.set_weights(plain.get_weights())
  with tf.GradientTape() as tape:
    outputs = mirrored(x, training=True)
    total = mirrored.compute_losses(x, outputs)["total"]
  depth = outputs["canon_depth"].numpy()
  np.testing.assert_allclose(depth, depth[:, :, ::-1], atol=1e-6)
  # The plain model's depth is lopsided (so the check above can fail); its
  # network output, recovered through the tanh, mirror-averaged and mapped
  # back, is the symmetric model's depth.
  unbordered = plain(x)["canon_depth_unbordered"].numpy()
  assert np.abs(unbordered - unbordered[:, :, ::-1]).max() > 1e-4
  lo, hi = plain.min_depth, plain.max_depth
  centred = np.arctanh((unbordered - lo) / (hi - lo) * 2 - 1)
  expected = lo + (np.tanh(symmetric(centred).numpy()) + 1) / 2 * (hi - lo)
  np.testing.assert_allclose(outputs["canon_depth_unbordered"], expected,
                             atol=2e-5)
  # Mirrored factors then differ only in the albedo: the same depth seen.
  np.testing.assert_allclose(outputs["recon_depth"],
                             outputs["recon_depth_flip"], atol=1e-5)
  grads = tape.gradient(total, mirrored.net_depth.trainable_variables)
  assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("net_name", ["net_albedo", "net_light", "net_conf"])
def test_loss_gradient_matches_finite_differences(net_name):
  """Directional derivative along a random direction of one weight tensor."""
  model = tiny_model(lam_perc=1.0)
  x = images(1)
  model(x)
  variable = getattr(model, net_name).trainable_variables[-1]
  direction = tf.constant(
      np.random.default_rng(4).normal(size=variable.shape), tf.float32)
  direction /= tf.norm(direction)
  loss = lambda: model.compute_losses(x, model(x))["total"]
  with tf.GradientTape() as tape:
    total = loss()
  analytic = float(tf.reduce_sum(tape.gradient(total, variable) * direction))
  original = variable.numpy()
  eps = 1e-2
  values = []
  for sign in (1, -1):
    variable.assign(original + sign * eps * direction)
    values.append(float(loss()))
  variable.assign(original)
  numeric = (values[0] - values[1]) / (2 * eps)
  assert analytic == pytest.approx(numeric, rel=0.05, abs=1e-4)


def _train_step(model, x):
  with tf.GradientTape() as tape:
    total = model.compute_losses(x, model(x, training=True))["total"]
  return total, tape.gradient(total, model.trainable_variables)


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_forward_backward_compile_and_match_eager(jit_compile):
  model = tiny_model(lam_perc=1.0, lam_depth_sm=0.1)
  x = images()
  eager_total, eager_grads = _train_step(model, x)
  step = tf.function(lambda inputs: _train_step(model, inputs),
                     jit_compile=jit_compile)
  total, grads = step(x)
  assert float(total) == pytest.approx(float(eager_total), rel=1e-4)
  # XLA reassociates float32 sums through a deep network, and the L1 terms
  # (photometric, smoothness) have kinks where that can flip a subgradient:
  # small entries may differ, by at most 0.5% of the layer's largest.
  for g, e in zip(grads, eager_grads):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-2,
                               atol=5e-3 * float(tf.reduce_max(tf.abs(e))))


def test_import_leaves_tensorflow_addons_out():
  code = ("import sys, tf_unsup3d, tf_unsup3d.model, tf_unsup3d.rendering; "
          "print('tensorflow_addons' in sys.modules, "
          "'tensorflow_graphics.image.transformer' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.split()[-2:] == ["False", "False"]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))


def _bfloat16_twin(model_kwargs):
  """A float32 model and a mixed-bfloat16 one with the same weights."""
  import keras  # pylint: disable=g-import-not-at-top
  models = []
  for policy in ("float32", "mixed_bfloat16"):
    keras.mixed_precision.set_global_policy(policy)
    try:
      model = tiny_model(**model_kwargs)
      model.build((None, S, S, 3))
    finally:
      keras.mixed_precision.set_global_policy("float32")
    models.append(model)
  for source, target in zip(models[0].weights, models[1].weights):
    target.assign(source)
  return models


@pytest.mark.parametrize("model_kwargs", [
    dict(nf=16, zdim=32, light_view_nf=8, conf_zdim=32, lam_depth_sm=0.1),
    dict(nf=16, zdim=32, light_view_nf=8, use_conf_map=False, lam_perc=0.0)])
def test_mixed_bfloat16_step_stays_close_to_float32(model_kwargs):
  """bfloat16 networks (float32 output layers, rendering and losses): every
  loss term within 0.5% of float32 and each network's gradient within 37
  degrees of float32's (cosine > 0.8). Measured over six initialisations
  (keras seeds 0-5): losses within 0.2%, depth net cosine 0.90-0.94, the
  others above 0.989; bfloat16 keeps 8 mantissa bits."""
  from tf_unsup3d.data import synthetic  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)  # the same weights whatever ran before
  rng = np.random.default_rng(0)
  faces = []
  for _ in range(4):
    view, light = synthetic.sample_pose_and_light(rng)
    faces.append(synthetic.render_instance(synthetic.sample_instance(rng),
                                           view, light, S)[0])
  x = tf.constant(np.stack(faces))
  results = []
  for model in _bfloat16_twin(model_kwargs):
    with tf.GradientTape() as tape:
      terms = model.compute_losses(x, model(x, training=True))
    grads = tape.gradient(terms["total"], model.trainable_variables)
    results.append((model, terms, grads))
  (model32, terms32, grads32), (model16, terms16, grads16) = results
  assert model16.net_depth.body.layers[3].compute_dtype == "bfloat16"
  assert model16.net_depth.body.layers[-1].compute_dtype == "float32"
  for key, value in terms32.items():
    np.testing.assert_allclose(float(terms16[key]), float(value), rtol=5e-3,
                               err_msg=key)
  names = [v.path.split("/")[1] for v in model32.trainable_variables]
  for net in sorted(set(names)):
    pick = lambda grads: np.concatenate([  # noqa: E731
        g.numpy().ravel() for g, n in zip(grads, names)
        if n == net and g is not None])
    a, b = pick(grads32), pick(grads16)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.8, (net, cosine)


def test_forward_and_losses_at_128():
  """S = 128: every output at 128 (conf_sigma_perc at 32), finite losses."""
  s = 128
  model = tiny_model(image_size=s)
  x = tf.constant(np.random.default_rng(3).uniform(0, 1, (1, s, s, 3)),
                  tf.float32)
  out = model(x)
  sizes = {"B": 1, "S": s, "S/4": s // 4}
  shape = lambda text: tuple(int(d) if d.isdigit() else sizes[d]
                             for d in text.strip("[]").split(", "))
  assert ({k: tuple(v.shape) for k, v in out.items()} ==
          {k: shape(text) for k, (text, _) in model_lib.OUTPUTS.items()})
  terms = model.compute_losses(x, out)
  assert {"perceptual", "photometric"} <= set(terms)
  assert all(np.isfinite(float(v)) for v in terms.values())


def test_relu4_3_sizes_the_perceptual_confidence():
  """vgg_layer='relu4_3': S/8 features and an S/8 perceptual confidence."""
  model = tiny_model(vgg_layer="relu4_3")
  x = images(1)
  out = model(x)
  assert out["conf_sigma_perc"].shape == (1, S // 8, S // 8, 2)
  assert model.vgg(x).shape == (1, S // 8, S // 8, 512)
  terms = model.compute_losses(x, out)
  assert np.isfinite(float(terms["perceptual"]))


def test_unknown_vgg_layer_is_value_error():
  with pytest.raises(ValueError, match="relu4_3"):
    tiny_model(vgg_layer="relu2_2")
