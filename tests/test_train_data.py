"""Training on each data layout end to end: steps per epoch, skip warnings."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from tf_unsup3d import train as train_lib
from tf_unsup3d.data import synthetic
from tf_unsup3d.data import tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The configs are moving into the package; take whichever copy exists.
CONFIG = next(p for p in (
    os.path.join(ROOT, "tf_unsup3d", "gin_configs", "synthetic.gin"),
    os.path.join(ROOT, "gin_configs", "synthetic.gin")) if os.path.isfile(p))
# The smallest model the 64-pixel networks take, trained for whole epochs.
TINY = ["Unsup3D.nf = 8", "Unsup3D.zdim = 8", "Unsup3D.conf_zdim = 8",
        "Unsup3D.light_view_nf = 8", "Unsup3D.vgg_weights = None",
        "train.batch_size = 2", "train.num_epochs = 3",
        # The data is here (and a TFRecord root has no split folders).
        "train.generate_synthetic_data = False",
        "train.summary_every_steps = 100",
        "train.image_summary_every_steps = 1000",
        "train.checkpoint_every_steps = 1000",
        "make_dataset.crop_spec = None"]


def train(model_dir, data_dir, layout):
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [CONFIG],
      TINY + [f"make_dataset.data_dir = '{data_dir}'",
              f"make_dataset.layout = '{layout}'"])
  try:
    return train_lib.train(str(model_dir),
                           tf.distribute.OneDeviceStrategy("/cpu:0"))
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_three_epochs_from_two_shards_train_every_batch(tmp_path, capsys):
  """2 shards of 8 images at batch 2: 4 steps an epoch, 12 in 3 epochs.

  Taking the shard count (2) for the image count instead of the records
  would give 1 step per epoch and 1 batch in epochs 2 and 3 (6 steps).
  """
  images = str(tmp_path / "images")
  synthetic.generate(images, 8, 2, 2, image_size=64, seed=5, progress=False)
  for split in ("train", "val"):
    tfrecords.convert_split(images, str(tmp_path / "shards"), split,
                            "paired", num_shards=2)
  summary = train(tmp_path / "run", str(tmp_path / "shards"), "tfrecord")
  assert summary["steps"] == 12 and summary["epochs"] == 3
  assert np.isfinite(summary["loss/total"])
  assert "4/4" in capsys.readouterr().out  # the progress bar's total


@pytest.mark.slow
def test_a_bad_file_is_warned_about_once_per_run(tmp_path, caplog):
  data = tmp_path / "folder"
  synthetic.generate(str(tmp_path / "paired"), 4, 2, 2, image_size=64,
                     seed=6, progress=False)
  for split in ("train", "val"):
    os.makedirs(data / split)
    for name in os.listdir(tmp_path / "paired" / split / "image"):
      os.rename(tmp_path / "paired" / split / "image" / name,
                data / split / name)
  (data / "train" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")
  os.symlink(str(tmp_path / "gone.png"), str(data / "train" / "gone.png"))
  with caplog.at_level("WARNING"):
    summary = train(tmp_path / "run", str(data), "folder")
  assert summary["steps"] == 6 and summary["skipped_files"] == 2
  assert caplog.text.count("Skipping " + str(data / "train" / "corrupt.png")
                           ) == 1
  assert caplog.text.count("gone.png: broken symbolic link") == 1


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
