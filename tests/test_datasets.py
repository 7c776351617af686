"""Data pipelines: decoding, layouts, bad input, cropping and flipping."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import gin
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tf_unsup3d import preprocessing
from tf_unsup3d.data import datasets
from tf_unsup3d.data import tfrecords


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def png(array):
  return tf.io.encode_png(array).numpy()


def make_folder(root, split, images):
  for name, data in images.items():
    write(os.path.join(root, split, name), data)


def test_every_format_decodes_to_rgb_in_unit_range(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  gray16 = (rng.uniform(0, 1, (20, 30, 1)) * 65535).astype(np.uint16)
  rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], -1)
  files = {
      "a.png": png(rgb),
      "b.jpg": tf.io.encode_jpeg(rgb, quality=100).numpy(),
      "c.png": png(gray16),
      "d.png": png(rgba),
      "e.bmp": pil_bytes([rgb], "BMP"),
      "f.gif": pil_bytes([rgb, 255 - rgb], "GIF"),  # animated: first frame
  }
  make_folder(tmp_path, "test", files)
  dataset, info = datasets.make_dataset("test", training=False, batch_size=8,
                                        data_dir=str(tmp_path), image_size=16)
  batch = next(iter(dataset))["image"].numpy()
  assert batch.shape == (6, 16, 16, 3) and info["num_skipped"] == 0
  assert batch.min() >= 0 and batch.max() <= 1
  # 16-bit grayscale: the three channels are equal and keep the scale.
  gray = batch[2]
  np.testing.assert_allclose(gray[..., 0], gray[..., 1])
  assert gray.mean() == pytest.approx(gray16.mean() / 65535, abs=0.02)
  # RGBA loses alpha; RGB content matches the RGB file.
  np.testing.assert_allclose(batch[3], batch[0], atol=1e-6)
  np.testing.assert_allclose(batch[4], batch[0], atol=1e-6)  # BMP lossless
  # GIF: the first frame (palette quantisation), not the inverted second one.
  assert np.abs(batch[5] - batch[0]).mean() < 0.1


def pil_bytes(frames, fmt):
  buffer = io.BytesIO()
  images = [Image.fromarray(f) for f in frames]
  images[0].save(buffer, format=fmt, save_all=len(images) > 1,
                 append_images=images[1:])
  return buffer.getvalue()


def test_corrupt_and_truncated_files_are_skipped_and_counted(tmp_path):
  rng = np.random.default_rng(1)
  good = png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (32, 32, 3),
                                        dtype=np.uint8)).numpy()
  make_folder(tmp_path, "train", {
      "good1.png": good, "good2.png": good,
      "corrupt.png": b"\x89PNG\r\n\x1a\n this is not a png",
      "truncated.jpg": jpeg[:len(jpeg) // 2],
      "bad_header.jpg": b"\xff\xd8\xff\xe0 junk",
      "empty.png": b""})
  dataset, info = datasets.make_dataset("train", training=True, batch_size=1,
                                        data_dir=str(tmp_path), image_size=8)
  assert info["num_skipped"] == 4 and info["num_files"] == 6
  assert sorted(os.path.basename(p) for p in info["skipped"]) == [
      "bad_header.jpg", "corrupt.png", "empty.png", "truncated.jpg"]
  assert sum(1 for _ in dataset) == 2


def test_missing_or_empty_split_and_unpaired_image_are_clear_errors(tmp_path):
  for unset in (None, ""):
    with pytest.raises(datasets.DataError, match="make_dataset.data_dir"):
      datasets.make_dataset("train", True, 2, data_dir=unset)
  with pytest.raises(datasets.DataError, match="does not exist"):
    datasets.make_dataset("train", True, 2, data_dir=str(tmp_path))
  os.makedirs(tmp_path / "val")
  with pytest.raises(datasets.DataError, match="No images"):
    datasets.make_dataset("val", False, 2, data_dir=str(tmp_path))
  image = png(np.zeros((8, 8, 3), np.uint8))
  write(str(tmp_path / "test" / "image" / "000001_image.png"), image)
  with pytest.raises(datasets.DataError, match="000001_depth.png"):
    datasets.make_dataset("test", False, 2, data_dir=str(tmp_path),
                          layout="paired")
  with pytest.raises(datasets.DataError, match="layout"):
    datasets.make_dataset("test", False, 2, data_dir=str(tmp_path),
                          layout="zip")


def test_paired_depth_decodes_with_the_design_mapping(tmp_path):
  g = np.array([[0, 65535], [32768, 16384]], np.uint16)[..., None]
  write(str(tmp_path / "val" / "image" / "7_image.png"),
        png(np.zeros((2, 2, 3), np.uint8)))
  write(str(tmp_path / "val" / "depth" / "7_depth.png"), png(g))
  dataset, _ = datasets.make_dataset("val", False, 1, data_dir=str(tmp_path),
                                     layout="paired", image_size=2)
  depth = next(iter(dataset))["depth"].numpy()[0]
  # g' = (1 - g) * 2 - 1, then [-1, 1] -> [0.9, 1.1]: d = 1.1 - 0.2 g.
  expected = 1.1 - 0.2 * g[..., 0] / 65535
  np.testing.assert_allclose(depth, expected, atol=1e-6)


def test_crop_and_flip(tmp_path):
  image = np.zeros((10, 12, 3), np.uint8)
  image[:, :6] = 255  # left half white
  image[0, 0] = (255, 0, 0)
  cropped = preprocessing.crop(tf.constant(image), (0, 0, 4, 4)).numpy()
  assert cropped.shape == (4, 4, 3) and tuple(cropped[0, 0]) == (255, 0, 0)
  centre = preprocessing.crop(tf.constant(image), 6).numpy()
  assert centre.shape == (6, 6, 3)
  np.testing.assert_array_equal(centre, image[2:8, 3:9])
  make_folder(tmp_path, "train", {f"{i}.png": png(image) for i in range(16)})
  dataset, _ = datasets.make_dataset("train", True, 16, data_dir=str(tmp_path),
                                     image_size=12, crop_spec=(0, 0, 10, 12))
  batch = next(iter(dataset))["image"].numpy()
  left_white = batch[:, 5, 1, 1] > 0.5
  assert 0 < left_white.sum() < 16  # some flipped, some not
  np.testing.assert_allclose(batch[~left_white], batch[left_white][:1, :, ::-1]
                             .repeat((~left_white).sum(), 0), atol=1e-5)


def test_tfrecord_shards_hold_the_same_examples(tmp_path):
  """Folder -> shards -> pipeline gives the folder pipeline's images and depth."""
  rng = np.random.default_rng(2)
  root = tmp_path / "paired"
  for i in range(5):
    write(str(root / "test" / "image" / f"{i}_image.png"),
          png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    write(str(root / "test" / "depth" / f"{i}_depth.png"),
          png(rng.integers(0, 65535, (8, 8, 1), dtype=np.uint16)))
  write(str(root / "test" / "image" / "9_image.png"), b"broken")
  write(str(root / "test" / "depth" / "9_depth.png"), b"broken")
  count, bad = tfrecords.convert_split(str(root), str(tmp_path / "shards"),
                                       "test", "paired", num_shards=2)
  assert count == 5 and len(bad) == 2
  assert len(list((tmp_path / "shards").glob("test-*.tfrecord"))) == 2
  kwargs = dict(training=False, batch_size=8, image_size=8)
  folder, _ = datasets.make_dataset("test", data_dir=str(root),
                                    layout="paired", **kwargs)
  shards, _ = datasets.make_dataset("test", data_dir=str(tmp_path / "shards"),
                                    layout="tfrecord", **kwargs)
  a, b = next(iter(folder)), next(iter(shards))
  assert set(b) == {"image", "depth"}
  order = lambda x: np.argsort(x["image"].numpy().reshape(5, -1).sum(1))
  for key in ("image", "depth"):
    np.testing.assert_allclose(a[key].numpy()[order(a)],
                               b[key].numpy()[order(b)], atol=1e-6)


def write_split(root, split, count, size=(8, 8)):
  """`count` PNGs whose left half holds their index and right half 200."""
  for i in range(count):
    image = np.full(size + (3,), 200, np.uint8)
    image[:, :size[1] // 2] = i
    write(os.path.join(root, split, f"{i:03d}.png"), png(image))


def test_tfrecord_manifest_counts_records_for_steps_per_epoch(tmp_path,
                                                              caplog):
  """2 shards of 8 images at batch 2: 8 steps, not 2 // 2 = 1 (the shards)."""
  write_split(str(tmp_path / "images"), "train", 16)
  count, _ = tfrecords.convert_split(str(tmp_path / "images"),
                                     str(tmp_path / "shards"), "train",
                                     "folder", num_shards=2)
  manifest = json.loads((tmp_path / "shards" / "train-manifest.json")
                        .read_text())
  assert count == 16 and sorted(manifest["shards"].values()) == [8, 8]
  kwargs = dict(data_dir=str(tmp_path / "shards"), layout="tfrecord",
                image_size=8)
  dataset, info = datasets.make_dataset("train", True, 2, **kwargs)
  assert info["num_examples"] == 16
  assert datasets.steps_per_epoch(info, 2) == 8
  assert datasets.steps_per_epoch(info, 16) == 1  # was refused with 2 shards
  with pytest.raises(datasets.DataError, match="fewer than one batch"):
    datasets.steps_per_epoch(info, 32)
  assert sum(1 for _ in dataset) == 8
  # Without the manifest the records are counted, with a warning saying so.
  os.remove(tmp_path / "shards" / "train-manifest.json")
  with caplog.at_level("WARNING"):
    _, info = datasets.make_dataset("train", True, 2, **kwargs)
  assert info["num_examples"] == 16
  assert "counting the records" in caplog.text


def batch_ids(dataset):
  """Per batch, each image's index and whether it was flipped."""
  out = []
  for batch in dataset:
    image = np.round(batch["image"].numpy() * 255).astype(int)
    flipped = image[:, 0, 0, 0] == 200
    index = np.where(flipped, image[:, 0, -1, 0], image[:, 0, 0, 0])
    out.append([(int(i), bool(f)) for i, f in zip(index, flipped)])
  return out


ORDER_SCRIPT = """
import json, sys
import tensorflow as tf
tf.random.set_seed(1234)  # another process, another global random state
from tf_unsup3d.data import datasets
sys.path.insert(0, {tests!r})
import test_datasets
for layout, data_dir in (("folder", {folder!r}), ("tfrecord", {shards!r})):
  dataset, _ = datasets.make_dataset("train", True, 4, data_dir=data_dir,
                                     layout=layout, image_size=8, seed=5,
                                     epoch=3, shuffle_buffer=8)
  print(json.dumps(test_datasets.batch_ids(dataset)))
"""


@pytest.mark.parametrize("layout", ["folder", "tfrecord"])
def test_epoch_order_and_flips_depend_on_seed_and_epoch_only(tmp_path,
                                                             layout):
  write_split(str(tmp_path / "folder"), "train", 24)
  tfrecords.convert_split(str(tmp_path / "folder"), str(tmp_path / "shards"),
                          "train", "folder", num_shards=3)
  data_dir = str(tmp_path / layout.replace("tfrecord", "shards"))

  def order(epoch, seed=5, skip=0):
    dataset, _ = datasets.make_dataset(
        "train", True, 4, data_dir=data_dir, layout=layout, image_size=8,
        seed=seed, epoch=epoch, shuffle_buffer=8)
    return batch_ids(dataset.skip(skip))

  full = order(3)
  assert len(full) == 6
  assert sorted(i for b in full for i, _ in b) == list(range(24))
  flips = [f for b in full for _, f in b]
  assert 0 < sum(flips) < 24
  tf.random.set_seed(99)  # the process's random state plays no part
  assert order(3) == full
  assert order(4) != full and order(3, seed=6) != full
  # Resuming after k batches gives batches k.. of the same epoch.
  assert order(3, skip=2) == full[2:]
  # Another process builds the same epoch the same way.
  script = ORDER_SCRIPT.format(tests=os.path.dirname(__file__),
                               folder=str(tmp_path / "folder"),
                               shards=str(tmp_path / "shards"))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  other = lines[0] if layout == "folder" else lines[1]
  assert [[tuple(e) for e in b] for b in other] == full


def test_workers_split_the_epoch_order_between_them(tmp_path):
  write_split(str(tmp_path), "train", 12)
  parts = []
  for worker in range(2):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=worker,
        num_replicas_in_sync=2)
    dataset, _ = datasets.make_dataset("train", True, 2, data_dir=str(tmp_path),
                                       image_size=8, input_context=context,
                                       epoch=1)
    parts.append([e for b in batch_ids(dataset) for e in b])
  full, _ = datasets.make_dataset("train", True, 1, data_dir=str(tmp_path),
                                  image_size=8, epoch=1)
  full = [e for b in batch_ids(full) for e in b]
  assert parts[0] == full[0::2] and parts[1] == full[1::2]


def test_non_square_photo_is_centre_cropped_as_serving_does(tmp_path):
  rng = np.random.default_rng(3)
  photo = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)  # 64 high
  write(str(tmp_path / "val" / "wide.png"), png(photo))
  dataset, _ = datasets.make_dataset("val", False, 1, data_dir=str(tmp_path),
                                     image_size=32)
  training = next(iter(dataset))["image"].numpy()[0]
  serving = preprocessing.decode_image(png(photo), 32).numpy()
  np.testing.assert_allclose(training, serving, atol=1e-6)
  # Independently: the centre 64 x 64 square, 2 x 2 block means.
  square = photo[:, 32:96].astype(np.float64) / 255
  expected = square.reshape(32, 2, 32, 2, 3).mean((1, 3))
  np.testing.assert_allclose(training, expected, atol=1e-5)


def huge_png_header(height, width):
  """A small file whose PNG header claims height x width RGB pixels."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data +
                              struct.pack(">I", zlib.crc32(kind + data)))
  idat = zlib.compress(b"\0" * 100000)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
          + chunk(b"IEND", b""))


def test_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path,
                                                                 caplog):
  write_split(str(tmp_path), "train", 4)
  write(str(tmp_path / "train" / "huge.png"), huge_png_header(16000, 16000))
  # A real, valid image over a lowered limit: 300 x 400 zeros.
  write(str(tmp_path / "train" / "big.png"),
        png(np.zeros((300, 400, 3), np.uint8)))
  with caplog.at_level("WARNING"):
    dataset, info = datasets.make_dataset("train", True, 1,
                                          data_dir=str(tmp_path),
                                          image_size=8, max_pixels=100000)
  assert info["num_skipped"] == 2 and info["num_examples"] == 4
  assert sum(1 for _ in dataset) == 4
  reasons = {os.path.basename(p): r for p, r in info["reasons"].items()}
  assert "16000 x 16000 pixels, more than max_pixels = 100000" in reasons[
      "huge.png"]
  assert "300 x 400 pixels" in reasons["big.png"]
  assert caplog.text.count("huge.png") == 1
  # The default is the serving limit, and gin sets it.
  _, info = datasets.make_dataset("train", True, 1, data_dir=str(tmp_path),
                                  image_size=8)
  assert [os.path.basename(p) for p in info["skipped"]] == ["huge.png"]
  gin.clear_config()
  gin.parse_config([f"make_dataset.data_dir = '{tmp_path}'",
                    "make_dataset.max_pixels = 1000"])
  try:
    _, info = datasets.make_dataset("train", True, 1, image_size=8)
  finally:
    gin.clear_config()
  assert info["num_skipped"] == 2


def test_broken_and_looping_symlinks_are_skipped_and_named(tmp_path, caplog):
  write_split(str(tmp_path), "train", 3)
  os.symlink(str(tmp_path / "nowhere.png"), str(tmp_path / "train" / "a.png"))
  os.symlink(str(tmp_path / "train" / "b.png"),
             str(tmp_path / "train" / "b.png"))
  with caplog.at_level("WARNING"):
    dataset, info = datasets.make_dataset("train", False, 8,
                                          data_dir=str(tmp_path), image_size=8)
  assert info["num_skipped"] == 2 and info["num_examples"] == 3
  reasons = {os.path.basename(p): r for p, r in info["reasons"].items()}
  assert "broken symbolic link" in reasons["a.png"]
  assert "symbolic link loop" in reasons["b.png"]
  assert next(iter(dataset))["image"].shape[0] == 3
  for name in ("a.png", "b.png"):
    assert caplog.text.count(name) == 1
  assert "b'" not in caplog.text


def test_crop_larger_than_the_images_is_a_clear_error(tmp_path, caplog):
  write_split(str(tmp_path), "train", 3)
  with pytest.raises(datasets.DataError,
                     match=r"crop_spec \(2, 2, 40, 40\).*8 x 8 pixels"):
    datasets.make_dataset("train", True, 1, data_dir=str(tmp_path),
                          image_size=8, crop_spec=(2, 2, 40, 40))
  # One image too small for the crop is skipped and named; the others train.
  write(str(tmp_path / "train" / "zz_big.png"),
        png(np.zeros((50, 50, 3), np.uint8)))
  with caplog.at_level("WARNING"):
    dataset, info = datasets.make_dataset(
        "train", True, 1, data_dir=str(tmp_path), image_size=8,
        crop_spec=(2, 2, 40, 40))
  assert info["num_examples"] == 1 and info["num_skipped"] == 3
  assert sum(1 for _ in dataset) == 1
  assert "does not fit in its 8 x 8 pixels" in caplog.text
  convert = str(tmp_path / "shards")
  tfrecords.convert_split(str(tmp_path), convert, "train", "folder", 1)
  with pytest.raises(datasets.DataError, match=r"crop_spec \(0, 0, 60, 60\)"):
    datasets.make_dataset("train", True, 1, data_dir=convert,
                          layout="tfrecord", crop_spec=(0, 0, 60, 60))
  with pytest.raises(datasets.DataError, match="crop_spec"):
    datasets.make_dataset("train", True, 1, data_dir=str(tmp_path),
                          crop_spec=(1, 2, 3))


def test_skip_warnings_are_readable_and_logged_once_per_run(tmp_path,
                                                            caplog):
  """As train builds them: the info call warns, the per-epoch ones do not."""
  write_split(str(tmp_path), "train", 4)
  write(str(tmp_path / "train" / "corrupt.png"), b"\x89PNG\r\n\x1a\n junk")
  with caplog.at_level("WARNING"):
    datasets.make_dataset("train", True, 2, data_dir=str(tmp_path),
                          image_size=8, check_cache_dir=str(tmp_path))
    for epoch in range(3):
      dataset, info = datasets.make_dataset(
          "train", True, 2, data_dir=str(tmp_path), image_size=8,
          check_cache_dir=str(tmp_path), epoch=epoch, log_skipped=False)
      list(dataset)
  assert caplog.text.count("corrupt.png") == 1
  assert "b'" not in caplog.text and 'b"' not in caplog.text
  assert info["reasons"] == {str(tmp_path / "train" / "corrupt.png"):
                             "cannot be decoded as an image (corrupt or "
                             "truncated)"}


def test_ground_truth_depth_resizes_like_pil_bilinear(tmp_path):
  rng = np.random.default_rng(4)
  g = rng.integers(0, 65536, (48, 40), dtype=np.uint16)
  write(str(tmp_path / "val" / "image" / "0_image.png"),
        png(np.zeros((48, 40, 3), np.uint8)))
  write(str(tmp_path / "val" / "depth" / "0_depth.png"), png(g[..., None]))
  dataset, _ = datasets.make_dataset("val", False, 1, data_dir=str(tmp_path),
                                     layout="paired", image_size=16)
  depth = next(iter(dataset))["depth"].numpy()[0]
  square = g[4:44].astype(np.float32) / 65535  # centre 40 x 40
  resized = np.asarray(Image.fromarray(square, mode="F").resize(
      (16, 16), Image.BILINEAR))
  np.testing.assert_allclose(depth, 1.1 - 0.2 * resized, atol=2e-6)


def area_weights(n, size):
  """`[size, n]` exact box-filter weights: output pixel i averages input
  [i n / size, (i + 1) n / size), each input pixel by its covered share."""
  edges = np.arange(size + 1) * n / size
  lo, hi = edges[:-1, None], edges[1:, None]
  j = np.arange(n)[None, :]
  return np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / (
      n / size)


def test_paired_data_at_128_crops_and_resizes_image_and_depth(tmp_path):
  """synface_128.gin's pipeline: 256 x 256 pairs, centre crop 170, resized
  to 128: the image by exact area averaging, the depth as PIL's bilinear."""
  rng = np.random.default_rng(5)
  image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
  g = rng.integers(0, 65536, (256, 256), dtype=np.uint16)
  write(str(tmp_path / "test" / "image" / "0_image.png"), png(image))
  write(str(tmp_path / "test" / "depth" / "0_depth.png"), png(g[..., None]))
  dataset, _ = datasets.make_dataset("test", False, 1, data_dir=str(tmp_path),
                                     layout="paired", image_size=128,
                                     crop_spec=170)
  batch = next(iter(dataset))
  assert batch["image"].shape == (1, 128, 128, 3)
  assert batch["depth"].shape == (1, 128, 128)
  crop = slice(43, 213)  # (256 - 170) / 2
  weights = area_weights(170, 128)
  expected = np.einsum("iy,yxc,jx->ijc", weights,
                       image[crop, crop].astype(np.float64) / 255, weights)
  np.testing.assert_allclose(batch["image"][0], expected, atol=1e-5)
  square = g[crop, crop].astype(np.float32) / 65535
  resized = np.asarray(Image.fromarray(square, mode="F").resize(
      (128, 128), Image.BILINEAR))
  np.testing.assert_allclose(batch["depth"][0], 1.1 - 0.2 * resized,
                             atol=2e-6)


def test_celeba_crops_at_128_reach_the_model_unresampled(tmp_path):
  """celeba_128.gin: `prepare celeba` writes 128 x 128 crops, and at
  image_size 128 the pipeline passes their pixels as they are (at 64,
  celeba.gin, they become 2 x 2 block means)."""
  rng = np.random.default_rng(6)
  crop = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
  write(str(tmp_path / "val" / "face.png"), png(crop))
  read = lambda size: next(iter(datasets.make_dataset(
      "val", False, 1, data_dir=str(tmp_path), image_size=size)[0]))[
          "image"].numpy()[0]
  np.testing.assert_allclose(read(128), crop / 255, atol=1e-7)
  np.testing.assert_allclose(
      read(64), (crop / 255).reshape(64, 2, 64, 2, 3).mean((1, 3)),
      atol=1e-6)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
