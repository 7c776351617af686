"""tf.data pipelines: image folders, paired image/depth folders, TFRecord shards.

Every pipeline yields dicts: `image` `[B, S, S, 3]` float32 in [0, 1] and,
for paired data, `depth` `[B, S, S]` in scene units (DESIGN section 6).
Files that cannot be decoded are found before training starts (`check_files`),
named in a warning, left out and counted; empty or missing splits and images
without their depth partner are errors.
"""

import concurrent.futures
import glob
import json
import os

from absl import logging
import gin
import tensorflow as tf

from tf_unsup3d import atomic_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
LAYOUTS = ("folder", "paired", "tfrecord")


class DataError(ValueError):
  """A dataset that cannot be used as configured (the message says why)."""


def list_folder(data_dir, split):
  """Sorted image files under `<data_dir>/<split>/` (recursively)."""
  root = os.path.join(data_dir, split)
  if not os.path.isdir(root):
    raise DataError(f"Split directory {root} does not exist. Expected "
                    f"<data_dir>/{{train,val,test}}/ with images inside; set "
                    "gin `make_dataset.data_dir`.")
  files = sorted(
      os.path.join(dirpath, name)
      for dirpath, _, names in os.walk(root) for name in names
      if name.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                    f"{root}.")
  return files


def list_paired(data_dir, split):
  """Sorted (image, depth) paths of the synthetic-face layout.

  `<split>/image/*_image.png` with `<split>/depth/*_depth.png`, the depth
  file named by replacing `image` with `depth`.
  """
  image_dir = os.path.join(data_dir, split, "image")
  if not os.path.isdir(image_dir):
    raise DataError(f"Paired split directory {image_dir} does not exist "
                    "(layout: <split>/image/*_image.png and "
                    "<split>/depth/*_depth.png).")
  images = sorted(glob.glob(os.path.join(image_dir, "*_image.*")))
  if not images:
    raise DataError(f"No *_image.* files in {image_dir}.")
  pairs = []
  for image in images:
    name = os.path.basename(image).replace("_image.", "_depth.")
    depth = os.path.join(data_dir, split, "depth", name)
    if not os.path.isfile(depth):
      raise DataError(f"Image {image} has no depth partner: expected {depth}.")
    pairs.append((image, depth))
  return pairs


def _decodes(path):
  try:
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return image.shape[0] > 0 and image.shape[1] > 0
  except (tf.errors.OpError, ValueError):
    return False


def check_files(paths, cache_path=None):
  """Decodes every file once; returns (good, bad) path lists.

  Bad files (corrupt, truncated, not an image) are logged by name. With
  `cache_path`, results are stored as JSON keyed by path, size and mtime, so
  a resumed run does not decode everything again.
  """
  cache = {}
  if cache_path and os.path.isfile(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)

  def key(path):
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"

  todo = [p for p in paths if key(p) not in cache]
  if todo:
    logging.info("Checking %d files for decode errors...", len(todo))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      for path, ok in zip(todo, pool.map(_decodes, todo)):
        cache[key(path)] = ok
  if cache_path and todo:
    # The workers of one run may write the same cache at once.
    atomic_files.write_bytes(cache_path, json.dumps(cache).encode())
  good = [p for p in paths if cache[key(p)]]
  bad = [p for p in paths if not cache[key(p)]]
  for path in bad:
    logging.warning("Skipping %s: it cannot be decoded as an image (corrupt, "
                    "truncated or not an image).", path)
  return good, bad


def decode_depth(png_bytes, min_depth, max_depth):
  """Depth PNG (8 or 16 bit) -> `[H, W]` scene units (DESIGN section 6).

  A value g in [0, 1] maps to g' = (1 - g) * 2 - 1 in [-1, 1], then linearly
  to [min_depth, max_depth].
  """
  g = tf.io.decode_image(png_bytes, channels=1, dtype=tf.float32,
                         expand_animations=False)[..., 0]
  g = (1.0 - g) * 2.0 - 1.0
  return min_depth + (g + 1.0) / 2.0 * (max_depth - min_depth)


def crop(image, crop_spec):
  """Crops `[H, W, C]`: None, an int centre-crop size, or (y0, x0, h, w)."""
  if crop_spec is None:
    return image
  if isinstance(crop_spec, int):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    size = tf.minimum(crop_spec, tf.minimum(height, width))
    return tf.image.crop_to_bounding_box(
        image, (height - size) // 2, (width - size) // 2, size, size)
  y0, x0, h, w = crop_spec
  return tf.image.crop_to_bounding_box(image, y0, x0, h, w)


def _resize(image, size, method="area"):
  return tf.image.resize(image, [size, size], method=method, antialias=True)


@gin.configurable(denylist=["split", "training", "batch_size", "input_context"])
def make_dataset(split, training, batch_size, data_dir=gin.REQUIRED,
                 layout="folder", image_size=64, crop_spec=None,
                 min_depth=0.9, max_depth=1.1, shuffle_buffer=2048,
                 random_flip=True, deterministic=None,
                 check_cache_dir=None, input_context=None, seed=0):
  """Batches of {'image' [B, S, S, 3] in [0, 1], 'depth' [B, S, S] (paired)}.

  Args:
    split: 'train', 'val' or 'test'.
    training: shuffling, random horizontal flips, whole batches only.
    batch_size: per-replica batch size.
    data_dir: dataset root.
    layout: 'folder' (<split>/**/*.jpg|png|...), 'paired' (synthetic-face
      layout with depth) or 'tfrecord' (<split>-*.tfrecord shards written by
      `tf_unsup3d.data.tfrecords`).
    image_size: output side S (antialiased resize).
    crop_spec: None, centre crop size (int) or (y0, x0, h, w), applied to
      the original image before resizing.
    min_depth, max_depth: depth PNG mapping.
    shuffle_buffer: examples in the shuffle buffer.
    random_flip: flip training images horizontally with probability 1/2.
    deterministic: keep the element order through parallel reads and
      decodes. None: yes except in training, where finished elements may
      overtake slow ones (faster; the order is random anyway).
    check_cache_dir: where `check_files` keeps its results (e.g. model_dir).
    input_context: `tf.distribute.InputContext` for per-worker sharding.
    seed: shuffle / flip seed.

  Returns:
    (dataset, info) where info = {'num_files', 'num_skipped', 'skipped'}.
  """
  ordered = (not training) if deterministic is None else bool(deterministic)
  if layout not in LAYOUTS:
    raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
  has_depth = layout == "paired"
  if layout == "tfrecord":
    files = sorted(glob.glob(os.path.join(data_dir, f"{split}-*.tfrecord")))
    if not files:
      raise DataError(f"No TFRecord shards {split}-*.tfrecord in {data_dir}; "
                      "write them with `python -m tf_unsup3d.data.tfrecords`.")
    info = {"num_files": len(files), "num_skipped": 0, "skipped": []}
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    dataset = dataset.interleave(tf.data.TFRecordDataset,
                                 num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=ordered)
    has_depth = _tfrecord_has_depth(files[0])
    dataset = dataset.map(_parse_record, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    if has_depth:
      pairs = list_paired(data_dir, split)
      cache = (os.path.join(check_cache_dir, f"file_check_{split}.json")
               if check_cache_dir else None)
      good, bad = check_files([p for pair in pairs for p in pair], cache)
      good = set(good)
      pairs = [(i, d) for i, d in pairs if i in good and d in good]
      images = [i for i, _ in pairs]
      depths = [d for _, d in pairs]
    else:
      cache = (os.path.join(check_cache_dir, f"file_check_{split}.json")
               if check_cache_dir else None)
      images, bad = check_files(list_folder(data_dir, split), cache)
      depths = None
    if not images:
      raise DataError(f"Every file of split {split!r} in {data_dir} failed to "
                      "decode.")
    info = {"num_files": len(images) + len(bad), "num_skipped": len(bad),
            "skipped": bad}
    slices = {"image": images}
    if has_depth:
      slices["depth"] = depths
    dataset = tf.data.Dataset.from_tensor_slices(slices)
    if input_context:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    dataset = dataset.map(
        lambda e: {k: tf.io.read_file(v) for k, v in e.items()},
        num_parallel_calls=tf.data.AUTOTUNE)

  def prepare(example):
    image = tf.io.decode_image(example["image"], channels=3, dtype=tf.float32,
                               expand_animations=False)
    out = {"image": _resize(crop(image, crop_spec), image_size)}
    if has_depth:
      depth = decode_depth(example["depth"], min_depth, max_depth)[..., None]
      out["depth"] = _resize(crop(depth, crop_spec), image_size,
                             method="nearest")[..., 0]
    if training and random_flip:
      flip = tf.random.uniform([], seed=seed) < 0.5
      out = {k: tf.cond(flip, lambda v=v: tf.reverse(v, [1]), lambda v=v: v)
             for k, v in out.items()}
    return out

  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=ordered)
  # A record that still fails to decode is dropped rather than ending the run.
  dataset = dataset.ignore_errors(log_warning=True)
  dataset = dataset.batch(batch_size, drop_remainder=training)
  return dataset.prefetch(tf.data.AUTOTUNE), info


def _tfrecord_has_depth(path):
  for record in tf.data.TFRecordDataset(path).take(1):
    example = tf.train.Example.FromString(record.numpy())
    return "depth" in example.features.feature
  raise DataError(f"TFRecord shard {path} is empty.")


def _parse_record(record):
  features = {"image": tf.io.FixedLenFeature([], tf.string),
              "depth": tf.io.FixedLenFeature([], tf.string, default_value="")}
  example = tf.io.parse_single_example(record, features)
  return example
