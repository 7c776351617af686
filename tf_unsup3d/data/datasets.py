"""tf.data pipelines: image folders, paired image/depth folders, TFRecord shards.

Every pipeline yields dicts: `image` `[B, S, S, 3]` float32 in [0, 1] and,
for paired data, `depth` `[B, S, S]` in scene units (DESIGN section 6).
Images go through `tf_unsup3d.preprocessing` (decode, crop, centre square,
resize), the same functions the serving signature and the demo use.

Files that cannot be used (corrupt, truncated, over the pixel limit, a
broken symbolic link, smaller than the crop box) are found before training
starts (`check_files`), named in a warning with the reason, left out and
counted; empty or missing splits, images without their depth partner and a
crop that fits no image are errors.

A training epoch's order, and its random flips, are a function of
(seed, epoch) alone (`epoch_order`), so a run resumed mid-epoch in another
process skips exactly the batches it had trained on.
"""

import concurrent.futures
import errno
import glob
import inspect
import json
import os
import typing

from absl import logging
import gin
import tensorflow as tf

from tf_unsup3d import atomic_files
from tf_unsup3d import preprocessing
from tf_unsup3d.data import depth_png

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
LAYOUTS = ("folder", "paired", "tfrecord")
# Stateless random ops pick their algorithm per device unless told: fix it,
# so the order does not depend on where the pipeline runs.
_RNG_ALG = "philox"
# The independent random streams of an epoch, by (seed, epoch) key.
_FLIP_STREAM, _SHUFFLE_STREAM = 0, 1


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
  file named by replacing `image` with `depth`. A depth partner that is a
  broken symbolic link counts as present here: `check_files` skips it.
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
    if not os.path.lexists(depth):
      raise DataError(f"Image {image} has no depth partner: expected {depth}.")
    pairs.append((image, depth))
  return pairs


class FileCheck(typing.NamedTuple):
  """What `check_files` found.

  good: usable paths, in input order. bad: the others, in input order.
  reasons: {bad path: why, as readable text}. sizes: {good path: (height,
  width)} in pixels.
  """
  good: list
  bad: list
  reasons: dict
  sizes: dict


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _header(data):
  """(format index, height, width) of encoded bytes, in one graph call
  (eager, these are dozens of small ops per file)."""
  height, width = preprocessing.header_size(data)
  return preprocessing.format_index(data), height, width


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decoded_size(data):
  """(height, width) of the decoded image; raises `tf.errors.OpError` if
  the bytes do not decode."""
  shape = tf.shape(tf.io.decode_image(data, channels=3,
                                      expand_animations=False))
  return shape[0], shape[1]


def _inspect(path, max_pixels):
  """Cache entry for one file: its size from the header, decoded if small.

  {'height', 'width', 'decoded'} or {'error': reason}. Files over
  `max_pixels` are not decoded (`decoded` False), so a huge image costs no
  memory here; a later run with a higher limit decodes them then.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    return {"error": f"cannot be read ({e.strerror})"}
  try:
    index, height, width = (int(v) for v in _header(data))
  except tf.errors.OpError:  # a JPEG whose header does not parse
    if int(preprocessing.format_index(data)) < 0:
      return {"error": "not a JPEG, PNG, GIF or BMP file"}
    return {"error": "cannot be decoded as an image (corrupt header)"}
  if index < 0:
    return {"error": "not a JPEG, PNG, GIF or BMP file"}
  if height * width > max_pixels:
    return {"height": height, "width": width, "decoded": False}
  try:
    height, width = (int(v) for v in _decoded_size(data))
  except (tf.errors.OpError, ValueError):
    return {"error": "cannot be decoded as an image (corrupt or truncated)"}
  if height == 0 or width == 0:
    return {"error": "has no pixels"}
  return {"height": height, "width": width, "decoded": True}


def _unreadable(path, error):
  """Why `os.stat(path)` failed, as readable text."""
  if os.path.islink(path):
    if error.errno == errno.ELOOP:
      return "symbolic link loop"
    if error.errno == errno.ENOENT:
      return f"broken symbolic link (target {os.readlink(path)} is missing)"
  return f"cannot be read ({error.strerror})"


def check_files(paths, cache_path=None,
                max_pixels=preprocessing.DEFAULT_MAX_PIXELS, log=True):
  """Reads every file's header, decodes the small enough ones once.

  Args:
    paths: file paths (str).
    cache_path: optional JSON file keeping the results, keyed by path, size
      and mtime, so a resumed run does not decode everything again.
    max_pixels: larger images (height x width, from the header) are skipped
      without being decoded (`preprocessing.DEFAULT_MAX_PIXELS`, as serving).
    log: warn once per skipped file, naming it and the reason.

  Returns:
    A `FileCheck`. Unreadable paths (broken or looping symbolic links,
    permissions), non-images, corrupt files and images over `max_pixels`
    are bad.
  """
  cache = {}
  if cache_path and os.path.isfile(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  reasons, keys = {}, {}
  for path in paths:
    try:
      stat = os.stat(path)
    except OSError as e:  # dangling or looping link, permissions
      reasons[path] = _unreadable(path, e)
      continue
    keys[path] = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"

  def stale(entry):
    # Bare booleans (an earlier cache format, without sizes) are checked
    # again; images skipped as too large need decoding once the limit
    # allows them.
    return not isinstance(entry, dict) or (
        "error" not in entry and not entry["decoded"]
        and entry["height"] * entry["width"] <= max_pixels)

  todo = [p for p, k in keys.items() if stale(cache.get(k))]
  if todo:
    logging.info("Checking %d files for decode errors...", len(todo))
    # The first file alone traces the checks' graphs once; first calls from
    # several threads would each trace them.
    cache[keys[todo[0]]] = _inspect(todo[0], max_pixels)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      for path, entry in zip(
          todo[1:], pool.map(lambda p: _inspect(p, max_pixels), todo[1:])):
        cache[keys[path]] = entry
    if cache_path:
      # The workers of one run may write the same cache at once.
      atomic_files.write_bytes(cache_path, json.dumps(cache).encode())
  sizes = {}
  for path, key in keys.items():
    entry = cache[key]
    if "error" in entry:
      reasons[path] = entry["error"]
    elif entry["height"] * entry["width"] > max_pixels:
      reasons[path] = (f"{entry['height']} x {entry['width']} pixels, more "
                       f"than max_pixels = {max_pixels} "
                       "(gin make_dataset.max_pixels)")
    else:
      sizes[path] = (entry["height"], entry["width"])
  bad = [p for p in paths if p in reasons]
  if log:
    for path in bad:
      logging.warning("Skipping %s: %s.", path, reasons[path])
  return FileCheck([p for p in paths if p in sizes], bad, reasons, sizes)


def decode_depth(png_bytes, min_depth, max_depth):
  """Depth PNG bytes (8 or 16 bit) -> float32 `[H, W]` in scene units.

  The grey level, scaled to [0, 1] whatever the bit depth, is read in the
  `depth_png` convention (near = bright).
  """
  gray = tf.io.decode_image(png_bytes, channels=1, dtype=tf.float32,
                            expand_animations=False)[..., 0]
  return depth_png.gray_to_depth(gray, min_depth, max_depth)


def prepare_example(example, image_size, crop_spec=None, min_depth=0.9,
                    max_depth=1.1, max_pixels=preprocessing.DEFAULT_MAX_PIXELS):
  """Encoded {'image'[, 'depth']} -> {'image' [S, S, 3] in [0, 1][, 'depth']}.

  Images through `preprocessing.decode_rgb` and `center_crop_resize`, as
  serving and the demo; depth `[S, S]` in scene units through the same
  crop and an antialiased bilinear resize (the reference's PIL bilinear).
  """
  image = preprocessing.decode_rgb(example["image"], max_pixels)
  out = {"image": preprocessing.center_crop_resize(image, image_size,
                                                   crop_spec)}
  if "depth" in example:
    depth = decode_depth(example["depth"], min_depth, max_depth)[..., None]
    out["depth"] = preprocessing.center_crop_resize(
        depth, image_size, crop_spec, method="bilinear")[..., 0]
  return out


def epoch_order(num_examples, seed, epoch):
  """Permutation of range(num_examples) (int64 `[N]`) set by (seed, epoch).

  Stateless: the same in every process and on every device, different
  for each epoch.
  """
  return tf.random.experimental.stateless_shuffle(
      tf.range(num_examples, dtype=tf.int64), seed=[seed, epoch],
      alg=_RNG_ALG).numpy()


def _flip(position, key):
  """Whether the example at `position` of the epoch's order is flipped."""
  seed = tf.random.experimental.stateless_fold_in(key, position, alg=_RNG_ALG)
  return tf.random.stateless_uniform([], seed, alg=_RNG_ALG) < 0.5


def _window_shuffle(dataset, window, key):
  """Shuffles records within consecutive windows, statelessly by `key`.

  tf.data's buffer shuffle draws from the process's global seed as well;
  this depends on `key` alone, so two processes agree on the order.
  """
  def shuffle(index, records):
    seed = tf.random.experimental.stateless_fold_in(key, index, alg=_RNG_ALG)
    return tf.random.experimental.stateless_shuffle(records, seed,
                                                    alg=_RNG_ALG)
  return dataset.batch(window).enumerate().map(shuffle).unbatch()


def check_image_size(image_size):
  """Raises DataError unless the pipeline's side is the model's.

  Args:
    image_size: the model's S (`Unsup3D.image_size`).

  Raises:
    DataError: gin's `make_dataset.image_size` (bound, else its default)
      is not `image_size`; the message names both bindings.
  """
  try:
    data_size = gin.query_parameter("make_dataset.image_size")
  except ValueError:  # unbound: make_dataset's own default
    data_size = inspect.signature(make_dataset).parameters[
        "image_size"].default
  if data_size != image_size:
    raise DataError(
        f"make_dataset.image_size = {data_size} but Unsup3D.image_size = "
        f"{image_size}: the pipeline must resize the images to the model's "
        "size; bind both to the same S (64, 128 or 256).")


def steps_per_epoch(info, batch_size):
  """Whole global batches in one epoch of the split `info` describes.

  Args:
    info: `make_dataset`'s info (its 'num_examples').
    batch_size: global batch size, > 0.

  Raises:
    DataError: when there is not one whole batch.
  """
  steps = info["num_examples"] // batch_size
  if steps < 1:
    raise DataError(
        f"The train split has {info['num_examples']} usable examples, fewer "
        f"than one batch ({batch_size}); lower train.batch_size.")
  return steps


class EpochDatasets:
  """An iterable whose every iteration is one epoch's pipeline.

  `build(epoch)` makes the pipeline of that epoch; `current_epoch()` says
  which epoch an iteration starting now belongs to (the training loop's
  checkpointed counter), so a resumed run gets the epoch it stopped in.
  """

  def __init__(self, build, current_epoch):
    self._build = build
    self._current_epoch = current_epoch

  def __iter__(self):
    return iter(self._build(int(self._current_epoch())))


def _crop_error(crop_spec, split, data_dir, sizes):
  """The error for a crop box that fits none of a split's images."""
  shown = sorted(set(sizes))[:3]
  listed = ", ".join(f"{h} x {w}" for h, w in shown)
  more = " and others" if len(set(sizes)) > len(shown) else ""
  return DataError(
      f"crop_spec {crop_spec} (y0, x0, h, w) does not fit any image of split "
      f"{split!r} in {data_dir}: the images are {listed}{more} pixels "
      "(height x width). Set gin make_dataset.crop_spec to a box inside "
      "them, an int for a centre crop, or None.")


class _Source(typing.NamedTuple):
  """One layout's usable examples of a split, still encoded.

  records: a dataset of one element per example, in the epoch's order when
    training, else in the listed order.
  read: element of `records` -> {'image': bytes[, 'depth': bytes]} (encoded
    files); applied after sharding, so each worker reads only its share.
  info: `make_dataset`'s info.
  """
  records: tf.data.Dataset
  read: typing.Callable
  info: dict


def _epoch_key(seed, epoch, stream):
  """Stateless key of one random stream (flips, record shuffle) of an epoch."""
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, epoch], tf.int64), stream, alg=_RNG_ALG)


def _check_split(pairs, split, data_dir, crop_spec, max_pixels, cache_path,
                 log):
  """The examples of a folder or paired split that can be used.

  Args:
    pairs: listed examples, sorted: (image path,) or (image path, depth path).
    split, data_dir: for the messages.
    crop_spec, max_pixels, cache_path, log: as `make_dataset` and
      `check_files`; an example is skipped when one of its files is bad or
      the crop does not fit its image.

  Returns:
    (usable pairs in listed order, info).
  """
  check = check_files([p for pair in pairs for p in pair], cache_path,
                      max_pixels, log)
  reasons = dict(check.reasons)
  misfits = [p for p in check.good
             if not preprocessing.crop_fits(crop_spec, *check.sizes[p])]
  for path in misfits:
    height, width = check.sizes[path]
    reasons[path] = (f"crop_spec {crop_spec} (y0, x0, h, w) does not fit in "
                     f"its {height} x {width} pixels")
    if log:
      logging.warning("Skipping %s: %s.", path, reasons[path])
  usable = [pair for pair in pairs if not any(p in reasons for p in pair)]
  if not usable:
    if misfits:
      raise _crop_error(crop_spec, split, data_dir,
                        [check.sizes[p] for p in misfits])
    raise DataError(f"Every file of split {split!r} in {data_dir} was "
                    "skipped (see the warnings for each file's reason).")
  skipped = [p for pair in pairs for p in pair if p in reasons]
  info = {"num_files": len(pairs), "num_examples": len(usable),
          "num_skipped": len(pairs) - len(usable), "skipped": skipped,
          "reasons": {p: reasons[p] for p in skipped}}
  return usable, info


def _file_source(pairs, names, split, data_dir, epoch_seed, **check):
  """A `_Source` of listed files, one file per name in each example.

  Args:
    pairs: (path per name) tuples, sorted.
    names: the example keys of the tuples' paths ('image'[, 'depth']).
    split, data_dir: for the messages.
    epoch_seed: (seed, epoch) of a training epoch, or None (listed order).
    **check: `_check_split`'s crop_spec, max_pixels, cache_path and log.
  """
  usable, info = _check_split(pairs, split, data_dir, **check)
  if epoch_seed is not None:
    usable = [usable[i] for i in epoch_order(len(usable), *epoch_seed)]
  slices = {name: [pair[i] for pair in usable]
            for i, name in enumerate(names)}
  def read(paths):
    return {name: tf.io.read_file(path) for name, path in paths.items()}
  return _Source(tf.data.Dataset.from_tensor_slices(slices), read, info)


def _folder_source(split, data_dir, epoch_seed, **check):
  """Folder layout: the images under <split>/ (`list_folder`)."""
  return _file_source([(p,) for p in list_folder(data_dir, split)],
                      ("image",), split, data_dir, epoch_seed, **check)


def _paired_source(split, data_dir, epoch_seed, **check):
  """Paired layout: images with their depth PNGs (`list_paired`)."""
  return _file_source(list_paired(data_dir, split), ("image", "depth"), split,
                      data_dir, epoch_seed, **check)


def manifest_path(data_dir, split):
  """The JSON manifest `tfrecords.convert_split` writes next to the shards."""
  return os.path.join(data_dir, f"{split}-manifest.json")


def _tfrecord_shards(data_dir, split, log=True):
  """(shard paths, record count) of a split, from its manifest if any.

  Without a usable manifest the records are counted (one read of every
  shard), with a warning saying so when `log`.
  """
  found = sorted(glob.glob(os.path.join(data_dir, f"{split}-*.tfrecord")))
  path = manifest_path(data_dir, split)
  warn = logging.warning if log else lambda *args: None
  if os.path.isfile(path):
    with open(path) as f:
      manifest = json.load(f)
    shards = [os.path.join(data_dir, name) for name in manifest["shards"]]
    if shards and all(os.path.isfile(s) for s in shards):
      extra = sorted(set(found) - set(shards))
      if extra:
        warn("%s lists %d shards; ignoring %d other %s-*.tfrecord files in "
             "%s (%s).", path, len(shards), len(extra), split, data_dir,
             ", ".join(extra[:3]))
      return shards, int(sum(manifest["shards"].values()))
    warn("%s names shards that are missing; using the %d shards found "
         "instead.", path, len(found))
  if not found:
    raise DataError(f"No TFRecord shards {split}-*.tfrecord in {data_dir}; "
                    "write them with `python -m tf_unsup3d.data.tfrecords`.")
  warn("No usable manifest %s: counting the records of %d shards (re-convert "
       "with tf_unsup3d.data.tfrecords to write one).", path, len(found))
  count = int(tf.data.TFRecordDataset(found).reduce(
      tf.constant(0, tf.int64), lambda n, _: n + 1))
  return found, count


def _first_record(files):
  """The first record of the first non-empty shard, as {key: bytes}."""
  for path in files:
    for record in tf.data.TFRecordDataset(path).take(1):
      example = tf.train.Example.FromString(record.numpy())
      return {k: v.bytes_list.value[0]
              for k, v in example.features.feature.items()}
  raise DataError(f"TFRecord shards {files[0]} ... are empty.")


def _parse_record(record, has_depth):
  """Serialized `tf.train.Example` -> {'image': bytes[, 'depth': bytes]}."""
  features = {"image": tf.io.FixedLenFeature([], tf.string)}
  if has_depth:
    features["depth"] = tf.io.FixedLenFeature([], tf.string)
  return tf.io.parse_single_example(record, features)


def _tfrecord_source(split, data_dir, crop_spec, epoch_seed, shuffle_buffer,
                     log):
  """TFRecord layout: the records of <split>-*.tfrecord, as a `_Source`.

  Records are not checked one by one: the first one's image size must fit
  the crop, and a record that fails to decode is dropped later. A training
  epoch reads the shards in its own order (`epoch_order`), one record of
  each in turn, and shuffles records within windows of `shuffle_buffer`.
  """
  files, count = _tfrecord_shards(data_dir, split, log)
  first = _first_record(files)
  height, width = (int(v) for v in preprocessing.header_size(first["image"]))
  if not preprocessing.crop_fits(crop_spec, height, width):
    raise _crop_error(crop_spec, split, data_dir, [(height, width)])
  info = {"num_files": count, "num_examples": count, "num_skipped": 0,
          "skipped": [], "reasons": {}}
  if epoch_seed is not None:
    files = [files[i] for i in epoch_order(len(files), *epoch_seed)]
  # Up to 64 shards at once, one record of each in turn, in a fixed order.
  records = tf.data.Dataset.from_tensor_slices(files).interleave(
      tf.data.TFRecordDataset, cycle_length=min(len(files), 64),
      block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if epoch_seed is not None and shuffle_buffer > 1:
    records = _window_shuffle(records, shuffle_buffer,
                              _epoch_key(*epoch_seed, _SHUFFLE_STREAM))
  has_depth = "depth" in first
  return _Source(records, lambda r: _parse_record(r, has_depth), info)


def _read(source, input_context, ordered):
  """(position in the epoch's order, encoded example) of this worker's share.

  Sharded by example, not by file or shard: every worker then gets the same
  number of batches, which the collective steps of a multi-worker run need.
  """
  dataset = source.records.enumerate()
  if input_context:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  return dataset.map(lambda i, e: (i, source.read(e)),
                     num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=ordered)


def _decode_and_flip(dataset, image_size, crop_spec, min_depth, max_depth,
                     max_pixels, flip_key, ordered):
  """`prepare_example` on (position, encoded example) elements.

  flip_key: None, or the key of the random horizontal flips, each a function
  of the example's position (`_flip`). An example that fails to decode (a
  file that changed since the check, a bad record) is dropped rather than
  ending the run.
  """
  def prepare(position, example):
    out = prepare_example(example, image_size, crop_spec, min_depth,
                          max_depth, max_pixels)
    if flip_key is not None:
      flip = _flip(position, flip_key)
      out = {k: tf.cond(flip, lambda v=v: tf.reverse(v, [1]), lambda v=v: v)
             for k, v in out.items()}
    return out

  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=ordered)
  return dataset.ignore_errors(log_warning=True)


def _batch(dataset, batch_size, training, num_examples, input_context):
  """Batches of `batch_size` (per replica) of `num_examples` examples.

  Training: whole batches only, exactly the epoch's global steps times the
  replicas this pipeline feeds, so every pipeline yields the same number (a
  multi-worker step waits for every worker).
  """
  dataset = dataset.batch(batch_size, drop_remainder=training)
  if training:
    replicas, pipelines = 1, 1
    if input_context:
      replicas = input_context.num_replicas_in_sync
      pipelines = input_context.num_input_pipelines
    steps = num_examples // (batch_size * replicas)
    dataset = dataset.take(steps * (replicas // pipelines))
  return dataset.prefetch(tf.data.AUTOTUNE)


@gin.configurable(denylist=["split", "training", "batch_size", "input_context",
                            "epoch", "log_skipped"])
def make_dataset(split, training, batch_size, data_dir=gin.REQUIRED,
                 layout="folder", image_size=64, crop_spec=None,
                 min_depth=0.9, max_depth=1.1, shuffle_buffer=2048,
                 random_flip=True, deterministic=None,
                 check_cache_dir=None, input_context=None, seed=0, epoch=0,
                 max_pixels=preprocessing.DEFAULT_MAX_PIXELS,
                 log_skipped=True, source=None):
  """Batches of {'image' [B, S, S, 3] in [0, 1], 'depth' [B, S, S] (paired)}.

  Args:
    split: 'train', 'val' or 'test'.
    training: the epoch's own order and random horizontal flips, whole
      batches only. Otherwise files in sorted order, no flips.
    batch_size: per-replica batch size.
    data_dir: dataset root.
    layout: 'folder' (<split>/**/*.jpg|png|...), 'paired' (synthetic-face
      layout with depth) or 'tfrecord' (<split>-*.tfrecord shards written by
      `tf_unsup3d.data.tfrecords`, with their <split>-manifest.json).
    image_size: output side S (antialiased resize).
    crop_spec: None, centre crop size (int) or (y0, x0, h, w), applied to
      the original image before the centre square crop and the resize
      (`preprocessing.center_crop_resize`).
    min_depth, max_depth: depth PNG mapping.
    shuffle_buffer: TFRecord layout: records are shuffled within windows of
      this many (the folder layouts permute the whole file list).
    random_flip: flip training images horizontally with probability 1/2.
    deterministic: None or True keep the element order through parallel
      reads and decodes (a resumed epoch relies on it). False lets finished
      elements overtake slow ones: faster, but a run resumed mid-epoch then
      skips other batches than the ones it trained on.
    check_cache_dir: where `check_files` keeps its results (e.g. model_dir).
    input_context: `tf.distribute.InputContext` for per-worker sharding.
    seed: order / flip seed.
    epoch: training epoch (>= 0): the order and the flips are a function of
      (seed, epoch) only (`epoch_order`).
    max_pixels: images over this many pixels (from the file header) are
      skipped without being decoded (the serving limit by default).
    log_skipped: warn about each skipped file (once per call).
    source: where the data comes from and how to prepare it (a sentence;
      each paper config says it), given when data_dir does not exist.

  Returns:
    (dataset, info) where info = {'num_files' (examples listed),
    'num_examples' (usable ones), 'num_skipped', 'skipped' (paths),
    'reasons' ({path: why})}.
  """
  ordered = True if deterministic is None else bool(deterministic)
  if not data_dir:
    raise DataError("No data directory: set gin make_dataset.data_dir (or "
                    "--gin_param=make_dataset.data_dir='<folder>').")
  if not os.path.isdir(data_dir):
    raise DataError(
        f"Data directory {data_dir} does not exist (gin "
        f"make_dataset.data_dir). " + (source or (
            "Put the images in <data_dir>/{train,val,test}/ (layout "
            f"{layout!r}, README 'Data') or point make_dataset.data_dir at "
            "them.")))
  if layout not in LAYOUTS:
    raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
  try:
    crop_spec = preprocessing.validate_crop_spec(crop_spec)
  except ValueError as e:
    raise DataError(f"gin make_dataset.{e}") from None
  epoch_seed = (seed, epoch) if training else None
  if layout == "tfrecord":
    examples = _tfrecord_source(split, data_dir, crop_spec, epoch_seed,
                                shuffle_buffer, log_skipped)
  else:
    listed = _paired_source if layout == "paired" else _folder_source
    examples = listed(
        split, data_dir, epoch_seed, crop_spec=crop_spec,
        max_pixels=max_pixels, log=log_skipped,
        cache_path=(os.path.join(check_cache_dir, f"file_check_{split}.json")
                    if check_cache_dir else None))
  flip_key = (_epoch_key(seed, epoch, _FLIP_STREAM)
              if training and random_flip else None)
  dataset = _read(examples, input_context, ordered)
  dataset = _decode_and_flip(dataset, image_size, crop_spec, min_depth,
                             max_depth, max_pixels, flip_key, ordered)
  return _batch(dataset, batch_size, training, examples.info["num_examples"],
                input_context), examples.info
