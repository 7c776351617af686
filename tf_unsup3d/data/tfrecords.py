r"""Converts an image folder or a paired image/depth folder to TFRecord shards.

    python -m tf_unsup3d.data.tfrecords --data_dir=data/synthetic \
        --output_dir=data/synthetic_tfrecord --layout=paired --num_shards=8

Writes <output_dir>/<split>-NNNNN-of-MMMMM.tfrecord per split, each record
holding the original encoded file bytes ('image', and 'depth' for paired
data) and the file name. Files that do not decode are skipped with a warning
naming them. Shards are written under a temporary name and renamed when
complete. Read them with gin `make_dataset.layout = 'tfrecord'`.
"""

import os

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from tf_unsup3d.data import datasets


def _bytes(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def convert_split(data_dir, output_dir, split, layout, num_shards):
  """Writes one split's shards; returns (records written, skipped paths)."""
  if layout == "paired":
    pairs = datasets.list_paired(data_dir, split)
    good, bad = datasets.check_files([p for pair in pairs for p in pair])
    good = set(good)
    entries = [{"image": i, "depth": d} for i, d in pairs
               if i in good and d in good]
  elif layout == "folder":
    good, bad = datasets.check_files(datasets.list_folder(data_dir, split))
    entries = [{"image": i} for i in good]
  else:
    raise datasets.DataError(f"layout must be 'folder' or 'paired' to "
                             f"convert, got {layout!r}.")
  os.makedirs(output_dir, exist_ok=True)
  num_shards = max(1, min(num_shards, len(entries)))
  for shard in range(num_shards):
    name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    path = os.path.join(output_dir, name)
    tmp = path + ".tmp"
    with tf.io.TFRecordWriter(tmp) as writer:
      for entry in entries[shard::num_shards]:
        feature = {key: _bytes(tf.io.read_file(p).numpy())
                   for key, p in entry.items()}
        feature["name"] = _bytes(os.path.basename(entry["image"]).encode())
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writer.write(example.SerializeToString())
    os.replace(tmp, path)
  logging.info("%s: %d records in %d shards, %d files skipped", split,
               len(entries), num_shards, len(bad))
  return len(entries), bad


def define_flags():
  """Command-line flags of the converter."""
  flags.DEFINE_string("data_dir", None, "Folder dataset root.")
  flags.DEFINE_string("output_dir", None, "Where to write the shards.")
  flags.DEFINE_enum("layout", "folder", ["folder", "paired"], "Input layout.")
  flags.DEFINE_list("splits", ["train", "val", "test"], "Splits to convert.")
  flags.DEFINE_integer("num_shards", 8, "Shards per split.")


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.data_dir or not args.output_dir:
    raise app.UsageError("--data_dir and --output_dir are required.")
  for split in args.splits:
    count, bad = convert_split(args.data_dir, args.output_dir, split,
                               args.layout, args.num_shards)
    print(f"{split}: {count} records, {len(bad)} unreadable files skipped"
          + (": " + ", ".join(bad) if bad else ""))


if __name__ == "__main__":
  define_flags()
  app.run(main)
