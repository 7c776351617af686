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


def test_flat_face_renders_the_analytic_plane_depth_and_shading():
  """All bumps off: the face is the plane z = 1.05 (frontal: constant depth;
  normal (0, 0, 1), shading ambient + diffuse * l_z)."""
  params = instance(**FLAT, skin=np.ones(3), lip=np.ones(3))
  image, depth = synthetic.render_instance(params, (0, 0, 0, 0, 0, 0),
                                           (0.2, 0.6, 0.3, -0.4), 32)
  face = depth < synthetic.MAX_DEPTH
  np.testing.assert_allclose(depth[face], synthetic.BASE_DEPTH, atol=1e-6)
  l_z = 1 / math.sqrt(0.3 ** 2 + 0.4 ** 2 + 1)
  centre = image[16, 16]  # away from eyes, brows and lips
  np.testing.assert_allclose(centre, 0.2 + 0.6 * l_z, atol=1e-3)


def test_yawed_plane_renders_the_ray_plane_intersection():
  """The plane z = 1.05 turned by yaw a about (0, 0, 1)."""
  params = instance(**FLAT)
  a, s = 0.4, 32
  _, depth = synthetic.render_instance(params, (0, a, 0, 0, 0, 0),
                                       (0.5, 0.5, 0, 0), s)
  f = (s - 1) / 2 / math.tan(math.radians(5))
  c = (s - 1) / 2
  v, u = np.mgrid[0:s, 0:s]
  ray = np.stack([(u - c) / f, (v - c) / f, np.ones((s, s))], -1)
  normal = np.array([math.sin(a), 0, math.cos(a)])
  anchor = np.array([0.05 * math.sin(a), 0, 1 + 0.05 * math.cos(a)])
  expected = (anchor @ normal) / (ray @ normal)
  face = depth < synthetic.MAX_DEPTH
  assert face.mean() > 0.2
  np.testing.assert_allclose(depth[face], expected[face], atol=1e-6)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
