"""The synthetic dataset: determinism, layout, encoding and analytic renders."""

import filecmp
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.data import synthetic

FLAT = {"cap": 0.0, "nose": 0.0, "brow": 0.0, "eye": 0.0, "cheek": 0.0,
        "chin": 0.0, "spots": []}


def instance(seed=0, **overrides):
  params = synthetic.sample_instance(np.random.default_rng(seed))
  params.update(overrides)
  return params


def test_generation_is_deterministic_and_splits_are_independent(tmp_path):
  synthetic.generate(str(tmp_path / "a"), 3, 2, 2, image_size=16, seed=5,
                     progress=False)
  synthetic.generate(str(tmp_path / "b"), 5, 2, 2, image_size=16, seed=5,
                     progress=False)
  synthetic.generate(str(tmp_path / "c"), 3, 2, 2, image_size=16, seed=6,
                     progress=False)
  for split in ("val", "test"):
    cmp = filecmp.dircmp(tmp_path / "a" / split / "image",
                         tmp_path / "b" / split / "image")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
  same = tmp_path / "a/train/image/000000_image.png"
  assert filecmp.cmp(same, tmp_path / "b/train/image/000000_image.png", False)
  assert not filecmp.cmp(same, tmp_path / "c/train/image/000000_image.png",
                         False)
  names = sorted(os.listdir(tmp_path / "b/train/image"))
  assert names == [f"{i:06d}_image.png" for i in range(5)]
  for name in names:
    assert (tmp_path / "b/train/depth" / name.replace("image", "depth")).exists()
  assert not any(p.name.endswith(".partial") for p in (tmp_path / "a").iterdir())
  depth = tf.io.decode_png(tf.io.read_file(
      str(tmp_path / "a/train/depth/000000_depth.png")), dtype=tf.uint16)
  assert depth.dtype == tf.uint16 and depth.shape == (16, 16, 1)
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(str(tmp_path / "a"), 1, 1, 1, image_size=16,
                       progress=False)


def test_depth_encoding_round_trips():
  depth = np.linspace(0.9, 1.1, 101)
  decoded = synthetic.decode_depth(synthetic.encode_depth(depth))
  np.testing.assert_allclose(decoded, depth, atol=0.2 / 65535)
  assert synthetic.encode_depth([1.1])[0] == 0  # background: max depth
  assert synthetic.encode_depth([0.9])[0] == 65535


def test_frontal_view_of_a_symmetric_face_is_mirror_symmetric():
  params = instance(spots=[])  # no one-sided details
  image, depth = synthetic.render_instance(params, (0, 0, 0, 0, 0, 0),
                                           (0.5, 0.5, 0.0, 0.3), 32)
  np.testing.assert_allclose(depth, depth[:, ::-1], atol=1e-6)
  np.testing.assert_allclose(image, image[:, ::-1], atol=1e-5)
  assert (depth < synthetic.MAX_DEPTH).mean() > 0.3  # a face is there
  with_spots = instance(spots=[(0.3, 0.0, 0.1, 0.3)])
  image, _ = synthetic.render_instance(with_spots, (0, 0, 0, 0, 0, 0),
                                       (0.5, 0.5, 0.0, 0.3), 32)
  assert np.abs(image - image[:, ::-1]).max() > 0.02


def test_sampled_faces_lie_in_front_of_the_rotation_centre_within_range():
  """Every sampled face is representable by the model: canonical depth in
  [MIN_DEPTH, MAX_DEPTH], the face in front of the rotation centre (only the
  eye sockets may dip a little behind it)."""
  rng = np.random.default_rng(7)
  for _ in range(300):
    depth, _, inside = synthetic.canonical_maps(
        synthetic.sample_instance(rng), 32)
    assert depth.min() >= synthetic.MIN_DEPTH
    assert depth.max() <= synthetic.ROT_CENTER_DEPTH + 0.02  # eye <= 0.02
    assert depth[inside].mean() < synthetic.ROT_CENTER_DEPTH


def test_flat_face_renders_the_analytic_plane_depth_and_shading():
  """All bumps off: the face is the plane z = BASE_DEPTH (frontal: constant
  depth; normal (0, 0, 1), shading ambient + diffuse * l_z)."""
  params = instance(**FLAT, skin=np.ones(3), lip=np.ones(3))
  image, depth = synthetic.render_instance(params, (0, 0, 0, 0, 0, 0),
                                           (0.2, 0.6, 0.3, -0.4), 32)
  face = depth < synthetic.MAX_DEPTH
  np.testing.assert_allclose(depth[face], synthetic.BASE_DEPTH, atol=1e-6)
  l_z = 1 / math.sqrt(0.3 ** 2 + 0.4 ** 2 + 1)
  centre = image[16, 16]  # away from eyes, brows and lips
  np.testing.assert_allclose(centre, 0.2 + 0.6 * l_z, atol=1e-3)


@pytest.mark.parametrize("base", [synthetic.BASE_DEPTH, 1.05])
def test_yawed_plane_renders_the_ray_plane_intersection(base, monkeypatch):
  """The plane z = base turned by yaw a about (0, 0, 1); a plane off the
  rotation centre also checks where the centre is."""
  monkeypatch.setattr(synthetic, "BASE_DEPTH", base)
  params = instance(**FLAT)
  a, s = 0.4, 32
  _, depth = synthetic.render_instance(params, (0, a, 0, 0, 0, 0),
                                       (0.5, 0.5, 0, 0), s)
  f = (s - 1) / 2 / math.tan(math.radians(5))
  c = (s - 1) / 2
  v, u = np.mgrid[0:s, 0:s]
  ray = np.stack([(u - c) / f, (v - c) / f, np.ones((s, s))], -1)
  normal = np.array([math.sin(a), 0, math.cos(a)])
  offset = base - 1.0
  anchor = np.array([offset * math.sin(a), 0, 1 + offset * math.cos(a)])
  expected = (anchor @ normal) / (ray @ normal)
  face = depth < synthetic.MAX_DEPTH
  assert face.mean() > 0.2
  np.testing.assert_allclose(depth[face], expected[face], atol=1e-6)


@pytest.mark.parametrize("view,light", [
    ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.4, 0.6, 0.0, 0.0)),
    ((0.1, 0.35, -0.08, 0.01, -0.008, 0.0), (0.3, 0.7, 0.45, -0.3)),
    ((-0.15, -0.4, 0.1, -0.01, 0.01, 0.0), (0.5, 0.4, -0.4, 0.35))])
def test_model_renders_the_ground_truth_factors_like_the_generator(view,
                                                                   light):
  """The two renderers check each other: the model's TensorFlow path, fed
  the generator's canonical depth, albedo, light and view, reproduces the
  NumPy ray-caster's image and depth on the face."""
  from tf_unsup3d import model as model_lib  # pylint: disable=g-import-not-at-top
  s = 64
  params = instance(seed=5)
  canon_depth, albedo, _ = synthetic.canonical_maps(params, s)
  image, depth = synthetic.render_instance(params, view, light, s)
  model = model_lib.Unsup3D(nf=8, zdim=16, light_view_nf=8, conf_zdim=16,
                            lam_perc=0.0, vgg_weights=None,
                            z_translation_range=0.0)
  # The generator lights the posed face in the camera frame, the model the
  # canonical face: the same shading for the canonical light R^T l.
  rot = synthetic._rotation(*view[:3])  # pylint: disable=protected-access
  l_canon = rot.T @ np.array([light[2], light[3], 1.0])
  # Network-range inputs: the model rescales them to the factors above.
  raw_light = [2 * light[0] - 1, 2 * light[1] - 1, l_canon[0] / l_canon[2],
               l_canon[1] / l_canon[2]]
  raw_view = [a / math.radians(60) for a in view[:3]] + [
      t / 0.1 for t in view[3:5]] + [0.0]
  out = model.reconstruct(
      tf.constant(canon_depth[None], tf.float32),
      tf.constant(albedo[None] * 2 - 1, tf.float32),
      tf.constant([raw_light], tf.float32), tf.constant([raw_view], tf.float32))
  face = depth < synthetic.MAX_DEPTH
  # Away from the silhouette, where the two sample the surface differently.
  inner = tf.nn.erosion2d(
      tf.constant(face[None, ..., None], tf.float32), tf.zeros([5, 5, 1]),
      [1, 1, 1, 1], "SAME", "NHWC", [1, 1, 1, 1]).numpy()[0, ..., 0] > 0.5
  assert inner.mean() > 0.2
  # Self-occlusion edges (the nose seen from the side) also differ: a few
  # pixels may.
  depth_error = np.abs(out["recon_depth"].numpy()[0] - depth)[inner]
  assert np.mean(depth_error < 2e-3) > 0.99, np.sort(depth_error)[-10:]
  error = np.abs(out["recon_image"].numpy()[0] - image)[inner]
  assert error.mean() < 0.01 and np.percentile(error, 95) < 0.03, (
      error.mean(), np.percentile(error, 95))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
