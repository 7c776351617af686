"""Pictures: colour maps, grids, atomic PNG writes, GIFs and TB summaries."""

import glob
import os

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tf_unsup3d import atomic_files
from tf_unsup3d import summaries
from tf_unsup3d import visualization


def test_image_grid_layout():
  """Row i, column j holds example i of column j, with white padding."""
  a = np.full((2, 3, 4, 3), 0.0, np.float32)
  b = np.full((2, 3, 4, 3), 1.0, np.float32)
  b[1] = 0.5
  grid = visualization.image_grid([a, b], pad=1)
  assert grid.shape == (2 * 4 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
  assert (grid[1:4, 1:5] == 0).all()  # a[0]
  assert (grid[5:8, 6:10] == 128).all()  # b[1]: round(0.5 * 255)
  assert (grid[0] == 255).all() and (grid[:, 5] == 255).all()
  with pytest.raises(ValueError, match="shape"):
    visualization.image_grid([a, b[:, :2]])


def test_depth_map_is_ordered_and_saturates():
  depth = tf.linspace(0.8, 1.2, 41)[None, None, :] * tf.ones([2, 4, 1])
  rgb = visualization.depth_to_rgb(depth, 0.9, 1.1).numpy()
  assert rgb.shape == (2, 4, 41, 3)
  assert rgb.min() >= 0.0 and rgb.max() <= 1.0
  # Near is bright: luminance falls monotonically from min to max depth.
  luminance = rgb[0, 0] @ np.array([0.299, 0.587, 0.114])
  inside = luminance[10:31]
  assert (np.diff(inside) < 0).all()
  # Values beyond the range take the end colours.
  np.testing.assert_allclose(rgb[0, 0, :10], np.broadcast_to(rgb[0, 0, 10],
                                                             (10, 3)),
                             atol=1e-5)
  np.testing.assert_allclose(rgb[0, 0, 31:], np.broadcast_to(rgb[0, 0, 30],
                                                             (10, 3)),
                             atol=1e-5)


def test_normal_map_colours():
  """Facing the camera (z = -1 in DESIGN's frame) is (0.5, 0.5, 1)."""
  normal = tf.constant([[[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0],
                          [0.0, -1.0, 0.0]]]])
  np.testing.assert_allclose(visualization.normal_to_rgb(normal).numpy()[0, 0],
                             [[0.5, 0.5, 1.0], [1.0, 0.5, 0.5],
                              [0.5, 1.0, 0.5]])


def test_write_png_is_atomic_and_readable(tmp_path):
  path = tmp_path / "sub" / "a.png"
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  visualization.write_png(str(path), image)
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), image)
  assert os.listdir(path.parent) == ["a.png"]  # no temporary left behind


def test_write_bytes_failure_keeps_the_old_file(tmp_path):
  path = tmp_path / "a.bin"
  path.write_bytes(b"old")
  with pytest.raises(TypeError):  # not bytes: fails mid-write
    atomic_files.write_bytes(str(path), object())
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["a.bin"]


def test_replacing_path_appears_only_when_the_block_succeeds(tmp_path):
  path = tmp_path / "sub" / "w.weights.h5"
  with atomic_files.replacing(str(path), suffix=".weights.h5") as tmp:
    assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(
        path.parent)
    assert not path.exists()  # nothing visible while writing
    with open(tmp, "wb") as f:
      f.write(b"new")
  assert path.read_bytes() == b"new"
  assert os.listdir(path.parent) == ["w.weights.h5"]
  with pytest.raises(RuntimeError):
    with atomic_files.replacing(str(path)) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("writer failed")
  assert path.read_bytes() == b"new"  # the old file stays
  assert os.listdir(path.parent) == ["w.weights.h5"]


def test_encode_gif_round_trip():
  """Frame count and (palette-quantised) colours survive decoding."""
  t = np.linspace(0.0, 1.0, 5)
  frames = np.zeros((5, 6, 7, 3), np.float32)
  frames[..., 0] = t[:, None, None]
  frames[:, :, 3:, 2] = 1.0
  decoded = tf.io.decode_gif(visualization.encode_gif(frames)).numpy()
  assert decoded.shape == (5, 6, 7, 3)
  np.testing.assert_allclose(decoded / 255.0, frames, atol=2 / 255)
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    visualization.encode_gif(frames[0])


def test_turntable_gif_puts_images_side_by_side():
  frames = np.zeros((3, 4, 8, 8, 3), np.float32)
  for b in range(3):
    frames[b, :, :, :, b] = 1.0  # image b is pure red, green or blue
  for t in range(4):
    frames[:, t, 0, 0] = 1.0 if t % 2 else 0.0  # consecutive frames differ
  gif, width, height = summaries.turntable_gif(frames, pad=2)
  decoded = tf.io.decode_gif(gif).numpy()
  assert decoded.shape == (4, height, width, 3)
  assert (width, height) == (3 * 10 + 2, 12)
  for b in range(3):
    tile = decoded[:, 3:10, 3 + 10 * b:10 + 10 * b]
    expected = np.zeros(3)
    expected[b] = 255
    np.testing.assert_array_equal(tile, np.broadcast_to(expected, tile.shape))
    np.testing.assert_array_equal(decoded[:, 2, 2 + 10 * b],
                                  [[0] * 3, [255] * 3] * 2)


def test_write_images_logs_factor_grid_and_animated_turntable(tmp_path):
  """The TB event file holds the grid and a GIF TensorBoard can show."""
  from tf_unsup3d import model as model_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.Unsup3D(nf=8, zdim=16, light_view_nf=8, conf_zdim=16,
                            lam_perc=0.0, vgg_weights=None)
  images = tf.random.stateless_uniform([2, 64, 64, 3], seed=[1, 2])
  writer = tf.summary.create_file_writer(str(tmp_path))
  grid = summaries.write_images(
      writer, model, lambda x: model(x, training=False), images, step=7)
  writer.flush()
  events = glob.glob(str(tmp_path / "events.*"))
  accumulator = event_accumulator.EventAccumulator(
      events[0], size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  tensors = {tag: accumulator.Tensors(tag)[0]
             for tag in accumulator.Tags()["tensors"]}
  assert set(tensors) == {"factors", "turntable"}
  assert tensors["turntable"].step == 7
  width, height, gif = tf.make_ndarray(tensors["turntable"].tensor_proto)
  decoded = tf.io.decode_gif(gif).numpy()
  # 9 yaw angles out and 7 back; the two images side by side.
  assert decoded.shape == (16, int(height), int(width), 3)
  assert int(width) == 2 * 66 + 2 and int(height) == 68
  # Frame k and its mirror on the way back are the same picture.
  np.testing.assert_array_equal(decoded[1], decoded[15])
  _, _, png = tf.make_ndarray(tensors["factors"].tensor_proto)
  np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), grid)


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
