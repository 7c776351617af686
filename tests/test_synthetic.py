"""The synthetic dataset: determinism, layout, encoding and analytic renders."""

import filecmp
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d.data import datasets
from tf_unsup3d.data import depth_png
from tf_unsup3d.data import synthetic

FLAT = {"cap": 0.0, "nose": 0.0, "brow": 0.0, "eye": 0.0, "cheek": 0.0,
        "chin": 0.0, "spots": []}


def instance(seed=0, **overrides):
  params = synthetic.sample_instance(np.random.default_rng(seed))
  params.update(overrides)
  return params


def tree(root):
  """{relative path: bytes} of every file under `root`."""
  files = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


def canonical_grid(s):
  """x (right) and y (down) in [-1, 1] over the canonical S x S grid."""
  y, x = np.mgrid[0:s, 0:s] / (s - 1) * 2 - 1
  return x, y


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
    depth_name = name.replace("image", "depth")
    assert (tmp_path / "b/train/depth" / depth_name).exists()
  assert not any(p.name.endswith(".partial")
                 for p in (tmp_path / "a").iterdir())
  depth = tf.io.decode_png(tf.io.read_file(
      str(tmp_path / "a/train/depth/000000_depth.png")), dtype=tf.uint16)
  assert depth.dtype == tf.uint16 and depth.shape == (16, 16, 1)
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(str(tmp_path / "a"), 1, 1, 1, image_size=16,
                       progress=False)


def test_depth_encoding_round_trips():
  limits = synthetic.MIN_DEPTH, synthetic.MAX_DEPTH
  depth = np.linspace(0.9, 1.1, 101)
  decoded = depth_png.decode(depth_png.encode(depth, *limits), *limits)
  np.testing.assert_allclose(decoded, depth, atol=0.2 / 65535)
  assert depth_png.encode([1.1], *limits)[0] == 0  # background: max depth
  assert depth_png.encode([0.9], *limits)[0] == 65535


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
                                                                   light,
                                                                   s=64):
  """The two renderers check each other: the model's TensorFlow path, fed
  the generator's canonical depth, albedo, light and view, reproduces the
  NumPy ray-caster's image and depth on the face."""
  # pylint: disable-next=g-import-not-at-top
  from tf_unsup3d import model as model_lib
  params = instance(seed=5)
  canon_depth, albedo, _ = synthetic.canonical_maps(params, s)
  image, depth = synthetic.render_instance(params, view, light, s)
  model = model_lib.Unsup3D(image_size=s, nf=8, zdim=16, light_view_nf=8,
                            conf_zdim=16, lam_perc=0.0, vgg_weights=None,
                            z_translation_range=0.0)
  # The generator lights the posed face in the camera frame, the model the
  # canonical face: the same shading for the object-frame light R^T l.
  dx, dy = synthetic.object_frame_light(
      {"rx": [view[0]], "ry": [view[1]], "rz": [view[2]], "dx": [light[2]],
       "dy": [light[3]]})
  # Network-range inputs: the model rescales them to the factors above.
  raw_light = [2 * light[0] - 1, 2 * light[1] - 1, dx[0], dy[0]]
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



def test_model_renders_the_ground_truth_factors_like_the_generator_at_128():
  """As above at 128 px, for one posed and side-lit face."""
  test_model_renders_the_ground_truth_factors_like_the_generator(
      (0.1, 0.35, -0.08, 0.01, -0.008, 0.0), (0.3, 0.7, 0.45, -0.3), s=128)


def test_generated_128_pixel_data_holds_whole_faces_in_range(tmp_path):
  """The files at 128 x 128, read through the training pipeline: images in
  [0, 1], depth in [MIN_DEPTH, MAX_DEPTH], each face inside the frame (no
  face pixel on the border rows or columns) and covering a good part of
  it, with the background at MAX_DEPTH."""
  root = tmp_path / "data"
  synthetic.generate(str(root), 2, 1, 1, image_size=128, seed=0,
                     num_workers=1, progress=False, **synthetic.WILD)
  for split in ("train", "val", "test"):
    assert json.loads((root / split / synthetic.MANIFEST_FILE).read_text())[
        "image_size"] == 128
    dataset, info = datasets.make_dataset(
        split, False, 2, data_dir=str(root), layout="paired",
        image_size=128)
    assert info["num_examples"] == (2 if split == "train" else 1)
    batch = next(iter(dataset))
    images, depths = batch["image"].numpy(), batch["depth"].numpy()
    assert images.shape[1:] == (128, 128, 3)
    assert depths.shape[1:] == (128, 128)
    assert images.min() >= 0 and images.max() <= 1
    # 16 bits over the depth range: within a step of it.
    step = (synthetic.MAX_DEPTH - synthetic.MIN_DEPTH) / 65535
    assert depths.min() >= synthetic.MIN_DEPTH - step
    assert depths.max() <= synthetic.MAX_DEPTH + step
    for depth in depths:
      face = depth < synthetic.MAX_DEPTH - step
      assert 0.2 < face.mean() < 0.8
      assert not (face[0].any() or face[-1].any() or face[:, 0].any() or
                  face[:, -1].any())
      assert depth[face].max() < synthetic.MAX_DEPTH - 0.05  # the face is
      # in front of the background, not blended into it


def sample_at(values, u, v):
  """Bilinear samples of `[S, S, ...]` at float pixel coordinates."""
  last = values.shape[0] - 2  # the last cell holds the far edge
  u0 = np.minimum(np.floor(u).astype(int), last)
  v0 = np.minimum(np.floor(v).astype(int), last)
  fu, fv = u - u0, v - v0
  if values.ndim == 3:
    fu, fv = fu[..., None], fv[..., None]
  return ((1 - fv) * ((1 - fu) * values[v0, u0] + fu * values[v0, u0 + 1]) +
          fv * ((1 - fu) * values[v0 + 1, u0] + fu * values[v0 + 1, u0 + 1]))


@pytest.mark.parametrize("index", range(3))
def test_a_scene_at_128_pixels_is_the_64_pixel_scene_sampled_finer(index):
  """The generator draws each face in normalised coordinates: the same
  scene at 128 px, read at the camera rays of the 64 px pixels (pixel u at
  64 looks along the ray of u' = 63.5 + (u - 31.5) * 63.5 / 31.5 at 128,
  DESIGN section 2's K), gives the 64 px depth and image away from the
  silhouette, and the face covers the same share of the frame."""
  params, view, light = synthetic.sample_scene(2, 0, index)
  image_64, depth_64 = synthetic.render_instance(params, view, light, 64)
  image_128, depth_128 = synthetic.render_instance(params, view, light, 128)
  face_64 = depth_64 < synthetic.MAX_DEPTH
  face_128 = depth_128 < synthetic.MAX_DEPTH
  assert abs(face_64.mean() - face_128.mean()) < 0.01
  v, u = np.mgrid[0:64, 0:64] * (63.5 / 31.5) + 63.5 - 31.5 * (63.5 / 31.5)
  # Pixels whose 2 x 2 neighbourhood at 128 is all face.
  inner = face_64 & (sample_at(face_128.astype(float), u, v) == 1.0)
  inner = inner & tf.nn.erosion2d(
      tf.constant(face_64[None, ..., None], tf.float32),
      tf.zeros([3, 3, 1]), [1, 1, 1, 1], "SAME", "NHWC",
      [1, 1, 1, 1]).numpy()[0, ..., 0].astype(bool)
  assert inner.mean() > 0.2
  depth_error = np.abs(sample_at(depth_128, u, v) - depth_64)[inner]
  # Bilinear between pixels of a surface with ~0.1 relief over the frame;
  # self-occlusion edges (the nose seen from the side) differ more.
  assert np.median(depth_error) < 1e-4, np.median(depth_error)
  assert np.mean(depth_error < 1e-3) > 0.97, np.sort(depth_error)[-10:]
  image_error = np.abs(sample_at(image_128, u, v) - image_64)[inner]
  assert image_error.mean() < 0.01 and np.percentile(image_error, 99) < 0.05


def rotation(rx, ry, rz):
  """DESIGN: R = Rz(rz) Ry(ry) Rx(rx), written out independently."""
  c, s = np.cos, np.sin
  r_x = np.array([[1, 0, 0], [0, c(rx), -s(rx)], [0, s(rx), c(rx)]])
  r_y = np.array([[c(ry), 0, s(ry)], [0, 1, 0], [-s(ry), 0, c(ry)]])
  r_z = np.array([[c(rz), -s(rz), 0], [s(rz), c(rz), 0], [0, 0, 1]])
  return r_z @ r_y @ r_x


def read_png(path, dtype=tf.uint8):
  return tf.io.decode_png(tf.io.read_file(str(path)), dtype=dtype).numpy()


def test_files_do_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
  pools = []
  make_pool = synthetic._make_pool  # pylint: disable=protected-access

  def spy(num_workers, start_method):
    pools.append(num_workers)
    return make_pool(num_workers, start_method)

  monkeypatch.setattr(synthetic, "_make_pool", spy)
  options = dict(image_size=12, seed=4, progress=False, **synthetic.WILD)
  synthetic.generate(str(tmp_path / "one"), 3, 2, 2, num_workers=1,
                     **options)
  assert not pools  # rendered in this process
  synthetic.generate(str(tmp_path / "two"), 3, 2, 2, num_workers=2,
                     **options)
  assert pools == [2]
  one, two = tree(tmp_path / "one"), tree(tmp_path / "two")
  # Per split: images, depths, views.csv and generator.json.
  assert len(one) == 2 * 7 + 2 * 3
  assert one == two
  images = [data for name, data in one.items() if name.endswith("_image.png")]
  assert len(set(images)) == 7  # every image seeded on its own


def test_views_csv_holds_the_view_and_light_of_every_image(tmp_path,
                                                           monkeypatch):
  """Flat white faces (the plane z = BASE_DEPTH through the rotation
  centre): each written depth map must be the ray-plane intersection of the
  view in views.csv, and the centre pixel its Lambertian shading (white;
  the eye and brow shadows moved off the face)."""
  sample = synthetic.sample_instance
  monkeypatch.setattr(synthetic, "sample_instance", lambda rng: dict(
      sample(rng), **FLAT, skin=np.ones(3), lip=np.ones(3), eye_x=9.0,
      brow_x=9.0))
  root, s = tmp_path / "data", 17
  counts = synthetic.generate(str(root), 4, 2, 0, image_size=s, seed=2,
                              max_yaw=40.0, max_pitch=20.0, max_roll=20.0,
                              num_workers=1, progress=False)
  f = (s - 1) / 2 / math.tan(math.radians(synthetic.FOV) / 2)
  c = (s - 1) / 2
  v, u = np.mgrid[0:s, 0:s]
  rays = np.stack([(u - c) / f, (v - c) / f, np.ones((s, s))], -1)
  centre = np.array([0.0, 0.0, synthetic.ROT_CENTER_DEPTH])
  assert synthetic.BASE_DEPTH == synthetic.ROT_CENTER_DEPTH
  for split, count in counts.items():
    views = synthetic.read_views(root / split)
    assert tuple(views) == synthetic.VIEW_COLUMNS
    np.testing.assert_array_equal(views["index"], np.arange(count))
    for i in range(count):
      row = {k: views[k][i] for k in views}
      assert abs(row["rx"]) <= math.radians(20)
      assert abs(row["ry"]) <= math.radians(40)
      assert abs(row["rz"]) <= math.radians(20)
      normal = rotation(row["rx"], row["ry"], row["rz"])[:, 2]
      shift = np.array([row["tx"], row["ty"], row["tz"]])
      expected = (centre + shift) @ normal / (rays @ normal)
      values = read_png(root / split / "depth" / f"{i:06d}_depth.png",
                        tf.uint16)[..., 0]
      depth = depth_png.decode(values, synthetic.MIN_DEPTH,
                               synthetic.MAX_DEPTH)
      face = depth < synthetic.MAX_DEPTH
      assert face.mean() > 0.2
      np.testing.assert_allclose(depth[face], expected[face], atol=4e-6)
      light = np.array([row["dx"], row["dy"], 1.0])
      shading = row["ambient"] + row["diffuse"] * max(
          0.0, normal @ light / np.linalg.norm(light))
      image = read_png(root / split / "image" / f"{i:06d}_image.png") / 255
      np.testing.assert_allclose(image[8, 8], min(shading, 1.0),
                                 atol=0.6 / 255)
  assert synthetic.read_views(root / "test")["rx"].shape == (0,)
  assert synthetic.read_views(root / "train" / "image") is None
  # The dataset listings see the images only, not the metadata.
  listed = datasets.list_folder(str(root), "train")
  assert len(listed) == 8 and all(p.endswith(".png") for p in listed)
  assert len(datasets.list_paired(str(root), "train")) == 4


class Interrupted(Exception):
  pass


def test_an_interrupted_generation_resumes(tmp_path, monkeypatch):
  options = dict(image_size=8, seed=1, progress=False, num_workers=1)
  synthetic.generate(str(tmp_path / "ref"), 3, 2, 2, **options)
  reference = tree(tmp_path / "ref")
  render, calls = synthetic.render_instance, []

  def counting(*args, fail_at=None, **kwargs):
    if len(calls) == fail_at:
      raise Interrupted()
    calls.append(1)
    return render(*args, **kwargs)

  run = tmp_path / "run"
  # Killed while writing val (after train and one val image).
  monkeypatch.setattr(synthetic, "render_instance",
                      lambda *a, **k: counting(*a, fail_at=4, **k))
  with pytest.raises(Interrupted):
    synthetic.generate(str(run), 3, 2, 2, **options)
  assert sorted(os.listdir(run)) == ["train", "val.partial"]
  assert len(os.listdir(run / "val.partial" / "image")) == 1
  (run / "val.partial" / "image" / "tmpkilled.tmp").write_bytes(b"half")
  kept = os.stat(run / "train" / "image" / "000000_image.png")
  calls.clear()
  monkeypatch.setattr(synthetic, "render_instance", counting)
  synthetic.generate(str(run), 3, 2, 2, **options)
  assert len(calls) == 1 + 2  # the missing val image, then test
  assert tree(run) == reference
  again = os.stat(run / "train" / "image" / "000000_image.png")
  assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
  calls.clear()
  synthetic.generate(str(run), 3, 2, 2, **options)  # complete: kept
  assert not calls
  # A split made with other settings, or missing a file, is not kept.
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(str(run), 3, 2, 2, **dict(options, seed=2))
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(str(run), 3, 2, 2, **dict(options, hair=0.5))
  os.remove(run / "test" / "depth" / "000001_depth.png")
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(str(run), 3, 2, 2, **options)
  synthetic.generate(str(run), 3, 2, 2, overwrite=True, **options)
  assert tree(run) == reference
  # A leftover .partial of other settings is discarded, not mixed in.
  other = tmp_path / "other"
  monkeypatch.setattr(synthetic, "render_instance",
                      lambda *a, **k: counting(*a, fail_at=2, **k))
  calls.clear()
  with pytest.raises(Interrupted):
    synthetic.generate(str(other), 3, 2, 2, **dict(options, seed=9))
  assert os.listdir(other) == ["train.partial"]
  monkeypatch.setattr(synthetic, "render_instance", render)
  synthetic.generate(str(other), 3, 2, 2, **options)
  assert tree(other) == reference


def test_pngs_round_trip_through_tensorflow_decoding():
  rng = np.random.default_rng(0)
  values = rng.integers(0, 65536, (5, 7)).astype(np.uint16)
  values[0, :5] = [0, 1, 255, 256, 65535]  # both bytes, and the extremes
  decoded = tf.io.decode_png(synthetic.encode_png(values), dtype=tf.uint16)
  assert decoded.dtype == tf.uint16 and decoded.shape == (5, 7, 1)
  np.testing.assert_array_equal(decoded.numpy()[..., 0], values)
  rgb = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
  np.testing.assert_array_equal(
      tf.io.decode_png(synthetic.encode_png(rgb)).numpy(), rgb)
  # The training pipeline's decoder reads the generator's depth back.
  depth = np.linspace(synthetic.MIN_DEPTH, synthetic.MAX_DEPTH, 35)
  depth = depth.reshape(5, 7)
  png = synthetic.encode_png(depth_png.encode(depth, synthetic.MIN_DEPTH,
                                              synthetic.MAX_DEPTH))
  np.testing.assert_allclose(
      datasets.decode_depth(png, synthetic.MIN_DEPTH,
                            synthetic.MAX_DEPTH).numpy(), depth, atol=3e-6)
  with pytest.raises(ValueError, match="uint16"):
    synthetic.encode_png(np.zeros((5, 7), np.float32))


def roughness(image, face):
  """Mean |Laplacian| over pixels whose 4 neighbours are background."""
  lap = (4 * image[1:-1, 1:-1] - image[:-2, 1:-1] - image[2:, 1:-1] -
         image[1:-1, :-2] - image[1:-1, 2:])
  bg = ~face
  far = (bg[1:-1, 1:-1] & bg[:-2, 1:-1] & bg[2:, 1:-1] & bg[1:-1, :-2] &
         bg[1:-1, 2:])
  return np.abs(lap[far]).mean()


def test_texture_background_is_rough_and_leaves_the_face_alone():
  frontal, s = (0.0,) * 6, 24
  colours = []
  for i in range(5):
    smooth, _, light = synthetic.sample_scene(3, 0, i)
    textured, _, light_t = synthetic.sample_scene(3, 0, i,
                                                  background="texture")
    assert light_t == light
    smooth["spots"] = textured["spots"] = []
    image_g, depth_g = synthetic.render_instance(smooth, frontal, light, s)
    image, depth = synthetic.render_instance(textured, frontal, light, s)
    np.testing.assert_array_equal(depth, depth_g)
    np.testing.assert_allclose(depth, depth[:, ::-1], atol=1e-6)
    face = depth < synthetic.MAX_DEPTH
    assert face.mean() > 0.3
    np.testing.assert_array_equal(image[face], image_g[face])
    assert roughness(image_g, face) < 1e-3  # a linear gradient
    assert roughness(image, face) > 0.03
    colours.append(image[~face].mean(0))
  assert np.std(colours, axis=0).min() > 0.03  # random colours


def test_options_keep_the_face_view_and_light():
  for i in range(5):
    params, view, light = synthetic.sample_scene(6, 1, i)
    wild, wild_view, wild_light = synthetic.sample_scene(6, 1, i,
                                                         **synthetic.WILD)
    assert wild_light == light
    np.testing.assert_allclose(wild_view[:3], np.array(view[:3]) * [
        15 / 10, 45 / 30, 1.0])  # the same draws, wider ranges
    assert wild_view[3:] == view[3:]
    assert set(wild) - set(params) <= {"texture", "hair", "paint"}
    assert {"texture", "paint"} <= set(wild)
    for key, value in params.items():
      np.testing.assert_array_equal(wild[key], value)
  hair = [("hair" in synthetic.sample_scene(0, 0, i, hair=0.5)[0])
          for i in range(200)]
  assert 70 < sum(hair) < 130
  assert not any("hair" in synthetic.sample_scene(0, 0, i)[0]
                 for i in range(50))


def test_painted_features_change_only_the_albedo_around_them():
  """Painting: the same depth, a mirror-symmetric albedo, changed only at
  the eyes, brows and lips, with dark pupils, light sclera and red lips."""
  s = 128
  x, y = canonical_grid(s)
  for i in range(5):
    base, _, _ = synthetic.sample_scene(5, 0, i)
    base["spots"] = []
    paint = synthetic.sample_extras(np.random.default_rng(i))["paint"]
    paint.update(eye_scale=1.0, iris=0.04, lip_h=0.05)
    depth, albedo, inside = synthetic.canonical_maps(base, s)
    p_depth, p_albedo, p_inside = synthetic.canonical_maps(
        dict(base, paint=paint), s)
    np.testing.assert_array_equal(p_depth, depth)
    np.testing.assert_array_equal(p_inside, inside)
    np.testing.assert_allclose(p_albedo, p_albedo[:, ::-1], atol=1e-12)
    changed = np.abs(p_albedo - albedo).max(-1) > 1e-3
    eyes_and_brows = ((y > base["brow_y"] - 0.3) &
                      (y < base["eye_y"] + 0.1))
    lips = np.abs(y - 0.4) < 0.15
    assert changed.any() and not (changed & ~eyes_and_brows & ~lips).any()

    def at(cx, cy):  # nearest canonical pixel
      return p_albedo[round((cy + 1) / 2 * (s - 1)),
                      round((cx + 1) / 2 * (s - 1))]

    for side in (-1, 1):
      assert at(side * base["eye_x"], base["eye_y"]).max() < 0.1  # pupil
      assert at(side * (base["eye_x"] + 0.065),
                base["eye_y"]).min() > 0.75  # sclera
    lip = at(0.0, 0.425)
    assert lip[0] - lip[1] > 0.2


def test_hair_changes_albedo_and_depth_only_above_the_hairline():
  s = 48
  x, y = canonical_grid(s)
  for i in range(8):
    base, _, _ = synthetic.sample_scene(5, 0, i)
    base["spots"] = []
    extras = synthetic.sample_extras(np.random.default_rng(i))
    hair = extras["hair"]
    depth, albedo, inside = synthetic.canonical_maps(base, s)
    h_depth, h_albedo, h_inside = synthetic.canonical_maps(
        dict(base, hair=hair), s)
    np.testing.assert_array_equal(h_inside, inside)
    changed = ((np.abs(h_albedo - albedo).max(-1) > 1e-3) |
               (np.abs(h_depth - depth) > 1e-9)) & inside
    assert changed.any() and y[changed].max() < -0.2
    relief = depth - h_depth
    assert relief.min() >= 0 and 1e-4 < relief.max() <= hair["thick"]
    # Darker than the skin on the top of the head, away from the parting.
    top = inside & (y < -0.9 * base["b"]) & (np.abs(x - hair["part"]) > 0.1)
    assert top.any() and h_albedo[top].mean() < albedo[top].mean()
    assert h_albedo[top].max() < 0.4
    # The off-centre parting: neither albedo nor depth is symmetric.
    assert np.abs(h_albedo - h_albedo[:, ::-1])[inside].max() > 0.1
    assert np.abs(h_depth - h_depth[:, ::-1]).max() > 1e-4
    # Hair and paint together stay within the model's depth range.
    both = dict(base, hair=hair, paint=extras["paint"])
    wild_depth, wild_albedo, _ = synthetic.canonical_maps(both, s)
    assert wild_depth.min() >= synthetic.MIN_DEPTH
    assert wild_depth.max() <= synthetic.ROT_CENTER_DEPTH + 0.02
    assert 0 <= wild_albedo.min() and wild_albedo.max() <= 1


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
