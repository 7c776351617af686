"""The view consistency on re-rendered images (`Unsup3D.lam_rerender_view`)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import model as model_lib
from tf_unsup3d.data import synthetic
from tf_unsup3d.rendering import transforms

S = 64


def tiny_model(**kwargs):
  config = dict(nf=8, zdim=16, light_view_nf=8, use_conf_map=False,
                lam_perc=0.0, vgg_weights=None)
  config.update(kwargs)
  return model_lib.Unsup3D(**config)


def smooth_depth(batch, seed=0):
  """`[B, S, S]` smooth bumps in [0.92, 1.06]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:S, 0:S] / (S - 1) * 2 - 1
  maps = []
  for _ in range(batch):
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    maps.append(1.06 - 0.14 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.3))
  return tf.constant(np.stack(maps).astype(np.float32))


def test_rerender_at_the_identity_view_is_the_canonical_image():
  model = tiny_model()
  rng = np.random.default_rng(1)
  image = tf.constant(rng.uniform(-1, 1, (2, S, S, 3)).astype(np.float32))
  out = model.rerender(image, smooth_depth(2), tf.zeros([2, 6]))
  np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-4)


def test_uncovered_pixels_show_the_canonical_image_not_black():
  model = tiny_model()
  # A plane behind the rotation centre, turned 30 degrees: one side of the
  # image is left uncovered.
  depth = tf.fill([1, S, S], 1.06)
  rng = np.random.default_rng(2)
  image = tf.constant(rng.uniform(0.2, 0.8, (1, S, S, 3)).astype(np.float32))
  view = tf.constant([[0.0, 0.5, 0.0, 0.0, 0.0, 0.0]])  # 30 of 60 degrees
  _, _, covered = model.renderer.render_view(image, depth,
                                             model.decode_view(view))
  uncovered = covered.numpy()[0] == 0
  assert 64 <= uncovered.sum() < S * S // 2  # a strip, not nothing
  out = model.rerender(image, depth, view).numpy()[0]
  np.testing.assert_allclose(out[uncovered], image.numpy()[0][uncovered])
  assert out.min() >= 0.2 - 1e-5


def test_loss_term_weights_the_total_and_trains_only_the_view_network():
  model = tiny_model(lam_rerender_view=2.0, lam_depth_sm=0.0)
  rng = np.random.default_rng(3)
  x = tf.constant(rng.uniform(0, 1, (2, S, S, 3)).astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    out = model(x, training=True)
    terms = model.compute_losses(x, out)
  assert set(terms) == {"photometric", "photometric_flip", "rerender_view",
                        "total"}
  np.testing.assert_allclose(
      float(terms["total"]),
      float(terms["photometric"] + 0.5 * terms["photometric_flip"] +
            2.0 * terms["rerender_view"]), rtol=1e-6)
  grads = tape.gradient(terms["rerender_view"], model.trainable_variables)
  view_ids = {id(v) for v in model.net_view.trainable_variables}
  for v, g in zip(model.trainable_variables, grads):
    if id(v) in view_ids:
      assert g is not None
    else:
      assert g is None, v.path
  assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads
             if g is not None)
  assert "rerender_view" not in tiny_model().compute_losses(
      x, model(x, training=True))


def factors(albedo, depth, light):
  """A `call`-like dict of canonical factors: albedo `[B, S, S, 3]` in
  [0, 1], depth `[B, S, S]`, light `[B, 4]` (ambient, diffuse, dx, dy)."""
  light = tf.constant(light, tf.float32)
  direction = tf.concat([light[:, 2:], tf.ones_like(light[:, :1])], -1)
  return {"canon_albedo": tf.constant(albedo, tf.float32),
          "canon_depth": tf.constant(depth, tf.float32), "light": light,
          "light_direction": tf.linalg.l2_normalize(direction, axis=-1)}


def test_loss_is_the_mean_error_of_the_view_of_a_rendered_symmetric_face():
  # z translation has no range here: it is not predicted, nor scored.
  model = tiny_model(lam_rerender_view=1.0, z_translation_range=0.0)
  rng = np.random.default_rng(4)
  albedo = rng.uniform(0.2, 0.9, (3, S, S, 3))
  albedo = (albedo + albedo[:, :, ::-1]) / 2
  depth = smooth_depth(3, seed=4).numpy()
  depth = ((depth + depth[:, :, ::-1]) / 2).astype(np.float32)
  # Frontal light: the canonical image is albedo x (ambient + diffuse n.z).
  out = factors(albedo, depth, [[0.4, 0.5, 0.0, 0.0]] * 3)
  target = tf.random.uniform([3, 6], -0.5, 0.5, seed=5)
  total, count = model.rerender_view_loss_sums(out, target)
  assert float(count) == 3 * 5
  normal_z = model.renderer.normals_from_depth(depth)[..., 2:].numpy()
  canon_image = albedo * (0.4 + 0.5 * np.maximum(normal_z, 0)) * 2 - 1
  rendered = model.rerender(canon_image.astype(np.float32), depth, target)
  error = np.abs(model.net_view(rendered).numpy() - target.numpy())[:, :5]
  np.testing.assert_allclose(float(total), error.sum(), rtol=1e-4)


def test_loss_sees_only_the_mirror_symmetric_part_of_the_factors():
  model = tiny_model(lam_rerender_view=1.0)
  rng = np.random.default_rng(7)
  albedo = rng.uniform(0.2, 0.9, (2, S, S, 3))
  depth = smooth_depth(2, seed=7).numpy()
  light = [[0.3, 0.6, 0.4, -0.2]] * 2
  target = tf.random.uniform([2, 6], -0.5, 0.5, seed=8)
  loss = lambda a, d: float(model.rerender_view_loss_sums(
      factors(a, d, light), target)[0])
  mirrored = loss(albedo[:, :, ::-1], depth[:, :, ::-1])
  np.testing.assert_allclose(loss(albedo, depth), mirrored, rtol=1e-5)
  assert abs(loss(albedo, depth + 0.05 * rng.uniform(size=depth.shape)) -
             mirrored) > 1e-6  # the loss does depend on the factors


def test_read_rerendered_views_are_what_the_view_term_scores():
  model = tiny_model(lam_rerender_view=1.0, z_translation_range=0.0)
  rng = np.random.default_rng(4)
  x = tf.constant(rng.uniform(0, 1, (3, S, S, 3)).astype(np.float32))
  out = model(x)
  target = tf.constant(rng.uniform(-0.5, 0.5, (3, 6)), tf.float32)
  read, zeroed = model.read_rerendered_views(out, target)
  assert read.shape == (3, 6)
  np.testing.assert_array_equal(zeroed[:, 5], 0.0)  # no z range
  np.testing.assert_array_equal(zeroed[:, :5], target[:, :5])
  total, count = model.rerender_view_loss_sums(out, target)
  np.testing.assert_allclose(
      float(tf.reduce_sum(tf.abs(read - zeroed)[:, :5])), float(total),
      rtol=1e-5)
  assert float(count) == 15


def test_depth_term_trains_only_the_depth_network_from_the_same_schedule():
  model = tiny_model(lam_rerender_view=2.0, rerender_canonical_depth=True)
  rng = np.random.default_rng(3)
  x = tf.constant(rng.uniform(0, 1, (2, S, S, 3)).astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    out = model(x, training=True)
    terms = model.compute_losses(x, out, lam_rerender_view=0.7)
  np.testing.assert_allclose(
      float(terms["total"]),
      float(terms["photometric"] + 0.5 * terms["photometric_flip"] +
            0.7 * (terms["rerender_view"] + terms["rerender_depth"])),
      rtol=1e-6)
  grads = tape.gradient(terms["rerender_depth"], model.trainable_variables)
  depth_ids = {id(v) for v in model.net_depth.trainable_variables}
  for v, g in zip(model.trainable_variables, grads):
    assert (g is not None) == (id(v) in depth_ids), v.path
  assert "rerender_depth" not in tiny_model(
      lam_rerender_view=2.0).compute_losses(x, out)


def test_depth_term_is_the_mean_depth_error_per_depth_range():
  # A flat-started depth network predicts mid depth (1.0) for any image, so
  # the term is the mean |target - 1| / 0.2 of the symmetrised target.
  model = tiny_model(lam_rerender_view=1.0, rerender_canonical_depth=True,
                     flat_depth_init=True)
  depth = smooth_depth(2, seed=9)
  rendered = tf.random.uniform([2, S, S, 3], -1, 1, seed=10)
  total, count = model._rerender_depth_loss_sums(rendered, depth)
  assert float(count) == 2 * S * S
  expected = np.abs(depth.numpy() - 1.0).mean() / 0.2
  np.testing.assert_allclose(float(total / count), expected, rtol=1e-5)


def test_equivariance_term_is_the_error_of_the_turned_input_view():
  # Brute force: render the input on its reconstructed depth turned by T,
  # and compare the view network's reading with T composed with the
  # prediction for the input, in encoder units.
  model = tiny_model(lam_rerender_view=1.0, z_translation_range=0.0)
  rng = np.random.default_rng(9)
  x = tf.constant(rng.uniform(0, 1, (3, S, S, 3)).astype(np.float32))
  out = model(x)
  turn = tf.constant(np.concatenate([rng.uniform(-0.5, 0.5, (3, 5)),
                                     np.zeros((3, 1))], 1), tf.float32)
  total, count = model.view_equivariance_loss_sums(x, out, turn)
  assert float(count) == 3 * 5
  rendered = model.rerender(x * 2.0 - 1.0, out["recon_depth"], turn)
  composed = transforms.compose_views(model.decode_view(turn), out["view"])
  scale = np.array([math.radians(60.0)] * 3 + [0.1, 0.1])
  target = np.clip(composed.numpy()[:, :5] / scale, -1, 1)
  error = np.abs(model.net_view(rendered).numpy()[:, :5] - target)
  np.testing.assert_allclose(float(total), error.sum(), rtol=1e-4)


def test_equivariance_term_joins_the_rerendered_view_term_and_trains_views():
  rng = np.random.default_rng(10)
  x = tf.constant(rng.uniform(0, 1, (2, S, S, 3)).astype(np.float32))
  model = tiny_model(lam_rerender_view=1.0, rerender_view_equivariance=True)
  with tf.GradientTape() as tape:
    out = model(x, training=True)
    tf.random.set_seed(12)
    with_turns = model.compute_losses(x, out)["rerender_view"]
  grads = tape.gradient(with_turns, model.trainable_variables)
  view_ids = {id(v) for v in model.net_view.trainable_variables}
  assert all((g is not None) == (id(v) in view_ids)
             for v, g in zip(model.trainable_variables, grads))
  tf.random.set_seed(12)
  canonical = model.rerender_view_loss_sums(out)
  equivariance = model.view_equivariance_loss_sums(x, out)
  np.testing.assert_allclose(
      float(with_turns),
      float((canonical[0] + equivariance[0]) / (canonical[1] + equivariance[1])),
      rtol=1e-5)


def test_scale_outside_0_1_is_value_error():
  with pytest.raises(ValueError, match="rerender_view_scale"):
    tiny_model(rerender_view_scale=1.5)


@pytest.mark.slow
def test_view_network_trained_on_rerenderings_reads_ray_cast_yaw():
  """Trained only on re-renderings of canonical faces, the view network
  reads the yaw of the same faces ray-cast by the independent NumPy
  renderer of the synthetic data."""
  model = tiny_model(lam_rerender_view=1.0, z_translation_range=0.0,
                     light_view_nf=16)
  faces = [synthetic.sample_scene(0, 0, i) for i in range(8)]
  albedos, depths, lights = [], [], []
  for params, _, light in faces:
    depth, albedo, inside = synthetic.canonical_maps(params, S)
    background = synthetic.background_image(params, S)
    albedos.append(np.where(inside[..., None], albedo, background))
    depths.append(depth)
    lights.append(light)
  canon = factors(np.stack(albedos), np.stack(depths), lights)
  model(canon["canon_albedo"])  # builds the networks
  optimizer = tf.keras.optimizers.Adam(3e-4)
  variables = model.net_view.trainable_variables

  @tf.function
  def step():
    # Turns in yaw only (up to 30 degrees): the one component tested here.
    yaw = tf.random.uniform([8, 1], -0.5, 0.5)
    target = tf.concat([tf.zeros([8, 1]), yaw, tf.zeros([8, 4])], axis=-1)
    with tf.GradientTape() as tape:
      total, count = model.rerender_view_loss_sums(canon, target)
      loss = total / count
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  for _ in range(400):
    step()
  rng = np.random.default_rng(6)
  yaws, images = [], []
  for params, _, light in faces:
    for _ in range(3):
      yaw = rng.uniform(-25.0, 25.0)
      image, _ = synthetic.render_instance(
          params, (0.0, math.radians(yaw), 0.0, 0.0, 0.0, 0.0), light, S)
      yaws.append(yaw)
      images.append(image)
  predicted = model.net_view(
      tf.constant(np.stack(images)) * 2.0 - 1.0).numpy()[:, 1] * 60.0
  assert np.corrcoef(predicted, yaws)[0, 1] > 0.8, (predicted, yaws)
