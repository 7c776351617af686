"""Data pipelines: decoding, layouts, bad input, cropping and flipping."""

import os

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

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
      "empty.png": b""})
  dataset, info = datasets.make_dataset("train", training=True, batch_size=1,
                                        data_dir=str(tmp_path), image_size=8)
  assert info["num_skipped"] == 3 and info["num_files"] == 5
  assert sorted(os.path.basename(p) for p in info["skipped"]) == [
      "corrupt.png", "empty.png", "truncated.jpg"]
  assert sum(1 for _ in dataset) == 2


def test_missing_or_empty_split_and_unpaired_image_are_clear_errors(tmp_path):
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
  cropped = datasets.crop(tf.constant(image), (0, 0, 4, 4)).numpy()
  assert cropped.shape == (4, 4, 3) and tuple(cropped[0, 0]) == (255, 0, 0)
  centre = datasets.crop(tf.constant(image), 6).numpy()
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
  assert len(os.listdir(tmp_path / "shards")) == 2
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


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
