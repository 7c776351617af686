r"""Converts an image folder or a paired image/depth folder to TFRecord shards.

    python -m tf_unsup3d.data.tfrecords --data_dir=data/synthetic \
        --output_dir=data/synthetic_tfrecord --layout=paired --num_shards=8

Writes <output_dir>/<split>-NNNNN-of-MMMMM.tfrecord per split, each record
holding the original encoded file bytes ('image', and 'depth' for paired
data) and the file name, and <output_dir>/<split>-manifest.json with each
shard's record count (training needs the count for its steps per epoch).
Files that cannot be used (see `datasets.check_files`: corrupt, over
--max_pixels, broken links) are skipped with a warning naming them and the
reason. Shards are written under a temporary name and renamed when
complete; the manifest is removed first and written last (atomically), so
it only ever describes complete shards. Read them with gin
`make_dataset.layout = 'tfrecord'`.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import preprocessing
from tf_unsup3d.data import datasets


def _bytes(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def convert_split(data_dir, output_dir, split, layout, num_shards,
                  max_pixels=preprocessing.DEFAULT_MAX_PIXELS):
  """Writes one split's shards and manifest.

  Args:
    data_dir: folder or paired dataset root.
    output_dir: where <split>-NNNNN-of-MMMMM.tfrecord and
      <split>-manifest.json go.
    split: 'train', 'val' or 'test'.
    layout: 'folder' or 'paired'.
    num_shards: shards to write (at most one per record).
    max_pixels: larger images are skipped (`datasets.check_files`).

  Returns:
    (records written, skipped paths).
  """
  if layout == "paired":
    pairs = datasets.list_paired(data_dir, split)
    check = datasets.check_files([p for pair in pairs for p in pair],
                                 max_pixels=max_pixels)
    good = set(check.good)
    entries = [{"image": i, "depth": d} for i, d in pairs
               if i in good and d in good]
  elif layout == "folder":
    check = datasets.check_files(datasets.list_folder(data_dir, split),
                                 max_pixels=max_pixels)
    entries = [{"image": i} for i in check.good]
  else:
    raise datasets.DataError(f"layout must be 'folder' or 'paired' to "
                             f"convert, got {layout!r}.")
  if not entries:
    raise datasets.DataError(f"Every file of split {split!r} in {data_dir} "
                             "was skipped; nothing to convert.")
  os.makedirs(output_dir, exist_ok=True)
  manifest = datasets.manifest_path(output_dir, split)
  if os.path.exists(manifest):
    os.remove(manifest)  # it would describe shards about to be replaced
  num_shards = max(1, min(num_shards, len(entries)))
  counts = {}
  for shard in range(num_shards):
    name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    counts[name] = 0
    with atomic_files.replacing(os.path.join(output_dir, name)) as tmp:
      with tf.io.TFRecordWriter(tmp) as writer:
        for entry in entries[shard::num_shards]:
          feature = {key: _bytes(tf.io.read_file(p).numpy())
                     for key, p in entry.items()}
          feature["name"] = _bytes(os.path.basename(entry["image"]).encode())
          example = tf.train.Example(
              features=tf.train.Features(feature=feature))
          writer.write(example.SerializeToString())
          counts[name] += 1
  record = {"split": split, "layout": layout, "num_records": len(entries),
            "shards": counts, "skipped": check.reasons}
  atomic_files.write_bytes(manifest, json.dumps(record, indent=1).encode())
  logging.info("%s: %d records in %d shards, %d files skipped", split,
               len(entries), num_shards, len(check.bad))
  return len(entries), check.bad


def define_flags():
  """Command-line flags of the converter."""
  flags.DEFINE_string("data_dir", None, "Folder dataset root.")
  flags.DEFINE_string("output_dir", None, "Where to write the shards.")
  flags.DEFINE_enum("layout", "folder", ["folder", "paired"], "Input layout.")
  flags.DEFINE_list("splits", ["train", "val", "test"], "Splits to convert.")
  flags.DEFINE_integer("num_shards", 8, "Shards per split.")
  flags.DEFINE_integer("max_pixels", preprocessing.DEFAULT_MAX_PIXELS,
                       "Skip images with more pixels (height x width).")


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.data_dir or not args.output_dir:
    raise app.UsageError("--data_dir and --output_dir are required.")
  for split in args.splits:
    count, bad = convert_split(args.data_dir, args.output_dir, split,
                               args.layout, args.num_shards, args.max_pixels)
    # The reasons were logged once per file by check_files.
    print(f"{split}: {count} records, {len(bad)} files skipped"
          + (": " + ", ".join(bad) if bad else ""))


if __name__ == "__main__":
  define_flags()
  app.run(main)
