"""CelebA preparation: crops, edge padding, resize, splits, errors, resuming."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tf_unsup3d.data import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def load(path):
  return np.asarray(Image.open(path))


def write_boxes(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.fixture
def celeba(tmp_path):
  """Three photos with a known 128 x 128 patch at a known box, one per split,
  and one whose box reaches outside the photo."""
  rng = np.random.default_rng(0)
  images = tmp_path / "img_celeba"
  patches, lines = {}, []
  for i, (x0, y0, split) in enumerate([(50, 40, 0), (7, 90, 1), (0, 0, 2)]):
    photo = rng.integers(0, 256, (240, 200, 3), dtype=np.uint8)
    patch = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    photo[y0:y0 + 128, x0:x0 + 128] = patch
    name = f"{i:06d}.png"
    save(str(images / name), photo)
    patches[name] = patch
    lines.append(f"{name} {split} {x0} {y0} 128 128")
  edge = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
  save(str(images / "000009.png"), edge)
  lines.append("000009.png 0 -20 -10 128 128")
  write_boxes(str(tmp_path / "bbox.txt"), lines)
  return tmp_path, patches, edge


def test_crops_hold_exactly_the_known_content(celeba, capsys):
  root, patches, edge = celeba
  out = root / "celeba"
  counts = prepare.prepare_celeba(str(root / "img_celeba"),
                                  str(root / "bbox.txt"), str(out))
  assert counts["written"] == 4 and counts["skipped"] == 0
  for name, split in [("000000.png", "train"), ("000001.png", "val"),
                      ("000002.png", "test")]:
    np.testing.assert_array_equal(load(str(out / split / name)),
                                  patches[name])
  # Outside the photo: each pixel takes the nearest edge pixel.
  rows = np.clip(np.arange(128) - 10, 0, 99)
  cols = np.clip(np.arange(128) - 20, 0, 89)
  np.testing.assert_array_equal(load(str(out / "train" / "000009.png")),
                                edge[rows][:, cols])
  assert sorted(os.listdir(out)) == ["test", "train", "val"]
  assert "4/4 images" in capsys.readouterr().out


def test_a_box_twice_the_output_size_averages_two_by_two_blocks(tmp_path):
  rng = np.random.default_rng(1)
  photo = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
  save(str(tmp_path / "in" / "a.png"), photo)
  write_boxes(str(tmp_path / "bbox.txt"), ["a.png 0 10 20 256 256"])
  prepare.prepare_celeba(str(tmp_path / "in"), str(tmp_path / "bbox.txt"),
                         str(tmp_path / "out"))
  box = photo[20:276, 10:266].astype(np.float64)
  expected = box.reshape(128, 2, 128, 2, 3).mean((1, 3))
  result = load(str(tmp_path / "out" / "train" / "a.png")).astype(np.float64)
  assert np.abs(result - expected).max() <= 0.5 + 1e-9  # rounding only


def test_resize_matches_half_pixel_bilinear_without_antialiasing():
  rng = np.random.default_rng(2)
  for height, width in [(100, 70), (300, 211), (128, 128)]:
    image = rng.uniform(0, 255, (height, width, 3))
    expected = tf.image.resize(image, [128, 128], method="bilinear",
                               antialias=False).numpy()
    # TensorFlow computes in float32: about 1e-5 on values up to 255.
    np.testing.assert_allclose(prepare.resize_bilinear(image, 128), expected,
                               atol=1e-4, rtol=0)


def test_jpeg_names_are_written_as_jpeg(tmp_path):
  photo = np.full((150, 150, 3), 90, np.uint8)
  save(str(tmp_path / "in" / "b.jpg"), photo)
  write_boxes(str(tmp_path / "bbox.txt"), ["b.jpg 1 0 0 150 150"])
  prepare.prepare_celeba(str(tmp_path / "in"), str(tmp_path / "bbox.txt"),
                         str(tmp_path / "out"))
  with Image.open(tmp_path / "out" / "val" / "b.jpg") as image:
    assert image.format == "JPEG" and image.size == (128, 128)
    assert np.abs(np.asarray(image).astype(int) - 90).max() <= 2


@pytest.mark.parametrize("line, message", [
    ("a.png 0 1 2 3", "expected 6 fields"),
    ("a.png 0 1 2 x 4", "must be integers"),
    ("a.png 3 1 2 30 40", "split must be 0"),
    ("a.png 0 1 2 0 40", "must be positive"),
    ("../a.png 0 1 2 30 40", "directory part"),
])
def test_malformed_box_lines_name_the_line(tmp_path, line, message):
  write_boxes(str(tmp_path / "bbox.txt"), ["ok.png 0 1 2 30 40", "", line])
  with pytest.raises(prepare.PrepareError, match=f"line 3 .*{message}"):
    prepare.parse_bbox_file(str(tmp_path / "bbox.txt"))


def test_missing_images_are_named_and_nothing_is_written(celeba):
  root, _, _ = celeba
  os.remove(root / "img_celeba" / "000001.png")
  with pytest.raises(prepare.PrepareError, match="1 of the 4 .*000001.png"):
    prepare.prepare_celeba(str(root / "img_celeba"), str(root / "bbox.txt"),
                           str(root / "out"))
  assert not (root / "out").exists()


def test_rerun_keeps_complete_outputs_and_writes_the_rest(celeba):
  root, _, _ = celeba
  out = root / "out"
  args = (str(root / "img_celeba"), str(root / "bbox.txt"), str(out))
  prepare.prepare_celeba(*args)
  first = load(str(out / "test" / "000002.png"))
  os.remove(out / "test" / "000002.png")  # as if interrupted before it
  (out / "train" / "leftover.tmp").write_bytes(b"half")
  counts = prepare.prepare_celeba(*args)
  assert counts["written"] == 1 and counts["existing"] == 3
  np.testing.assert_array_equal(load(str(out / "test" / "000002.png")), first)
  assert prepare.prepare_celeba(*args, overwrite=True)["written"] == 4


def test_tiny_crops_are_skipped_as_the_reference_does(tmp_path):
  save(str(tmp_path / "in" / "c.png"), np.zeros((50, 50, 3), np.uint8))
  write_boxes(str(tmp_path / "bbox.txt"), ["c.png 2 5 5 10 40"])
  counts = prepare.prepare_celeba(str(tmp_path / "in"),
                                  str(tmp_path / "bbox.txt"),
                                  str(tmp_path / "out"))
  assert counts["skipped"] == 1 and "too small" in counts["skipped_files"][
      "c.png"]


def test_command_line(celeba):
  root, patches, _ = celeba
  result = subprocess.run(
      [sys.executable, "-m", "tf_unsup3d.data.prepare", "celeba", "--images",
       str(root / "img_celeba"), "--bbox_file", str(root / "bbox.txt"),
       "--output_dir", str(root / "cli")],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "4 written" in result.stdout
  np.testing.assert_array_equal(load(str(root / "cli" / "val" / "000001.png")),
                                patches["000001.png"])
  os.remove(root / "img_celeba" / "000000.png")
  result = subprocess.run(
      [sys.executable, "-m", "tf_unsup3d.data.prepare", "celeba", "--images",
       str(root / "img_celeba"), "--bbox_file", str(root / "bbox.txt"),
       "--output_dir", str(root / "cli2")],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode != 0 and "000000.png" in result.stderr


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
