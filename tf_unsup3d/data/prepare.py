r"""Turns published datasets into this project's folder layout.

    python -m tf_unsup3d.data.prepare celeba --images DIR \
        --bbox_file celeba_crop_bbox.txt --output_dir data/celeba

celeba: the paper's CelebA face crops, as the reference implementation's
`data/celeba_crop.py` makes them. Each line of the box file (from the
reference repository, github.com/elliottwu/unsup3d, `data/`) reads

    <file name> <split 0|1|2> <x0> <y0> <w> <h>

The image is padded by replicating its edge pixels (by h rows above and
below, w columns left and right, so boxes may reach outside it), the box is
cut out, resized to 128 x 128 (bilinear, OpenCV's half-pixel convention,
not antialiased, as the reference) and written under
`<output_dir>/{train,val,test}/<file name>` for split 0, 1, 2 (JPEG at
quality 95 for .jpg names, OpenCV's default; PNG otherwise). Crops of 10
pixels or fewer on a side are skipped, as the reference does.

Every line and every image is checked before anything is written. Each
output is written atomically, so an interrupted run can be re-run with the
same command: existing outputs are kept (`--overwrite` rewrites them).
"""

import concurrent.futures
import io
import os
import sys
import time
import typing

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageOps

from tf_unsup3d import atomic_files
from tf_unsup3d import shapes

SPLITS = {"0": "train", "1": "val", "2": "test"}
OUTPUT_SIZE = 128
# The reference keeps a crop only if both sides exceed 10 pixels.
MIN_CROP_SIDE = 11
JPEG_QUALITY = 95  # OpenCV's imwrite default, which the reference used


class PrepareError(ValueError):
  """Input that cannot be prepared (the message says which and why)."""


class Box(typing.NamedTuple):
  """One line of the box file: file name, split folder, box in pixels."""
  name: str
  split: str
  x0: int
  y0: int
  w: int
  h: int


def parse_bbox_file(path):
  """The boxes of a CelebA crop file, in file order.

  Args:
    path: text file, one `<name> <split 0|1|2> <x0> <y0> <w> <h>` per line
      (blank lines allowed).

  Returns:
    A list of `Box`, split given as 'train', 'val' or 'test'.

  Raises:
    PrepareError: naming the line number and its text, for a line without
      six fields, non-integer or non-positive sizes, an unknown split, a
      file name with a directory part, or a name listed twice.
  """
  boxes, seen = [], {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      where = f"{path} line {number} ({line.strip()!r})"
      if len(fields) != 6:
        raise PrepareError(f"{where}: expected 6 fields '<file name> <split "
                           f"0|1|2> <x0> <y0> <w> <h>', got {len(fields)}.")
      name, split = fields[:2]
      try:
        x0, y0, w, h = (int(v) for v in fields[2:])
      except ValueError:
        raise PrepareError(f"{where}: x0, y0, w, h must be integers.") from None
      if split not in SPLITS:
        raise PrepareError(f"{where}: split must be 0 (train), 1 (val) or 2 "
                           f"(test), got {split!r}.")
      if w <= 0 or h <= 0:
        raise PrepareError(f"{where}: box width and height must be positive.")
      if os.path.basename(name) != name or name in (".", ".."):
        raise PrepareError(f"{where}: the file name must not have a directory "
                           "part.")
      if name in seen:
        raise PrepareError(f"{where}: {name} is already listed on line "
                           f"{seen[name]}.")
      seen[name] = number
      boxes.append(Box(name, SPLITS[split], x0, y0, w, h))
  if not boxes:
    raise PrepareError(f"{path} lists no boxes.")
  return boxes


def crop_padded(image, x0, y0, w, h):
  """The box (x0, y0, w, h) of `[H, W, C]`, outside pixels edge-replicated.

  As the reference: the image is padded by h rows above and below and w
  columns left and right, so a box reaching up to its own size outside the
  image is complete; one reaching further is cut at the padding (and may
  come out smaller than h x w).
  """
  shapes.check_shape(image, "image", ("H", "W", "C"))
  padded = np.pad(image, ((h, h), (w, w), (0, 0)), mode="edge")
  top, left = y0 + h, x0 + w
  return padded[max(top, 0):max(top + h, 0), max(left, 0):max(left + w, 0)]


def resize_bilinear(image, size):
  """`[H, W, C]` -> `[size, size, C]` float64, bilinear without antialiasing.

  OpenCV's INTER_LINEAR convention (the reference's `cv2.resize`): output
  pixel i samples the input at (i + 0.5) * in / out - 0.5, clamped to the
  image, so a 2x reduction averages 2 x 2 blocks.
  """
  shapes.check_shape(image, "image", ("H", "W", "C"))
  image = image.astype(np.float64)
  for axis in (0, 1):
    length = image.shape[axis]
    source = (np.arange(size) + 0.5) * length / size - 0.5
    source = np.clip(source, 0, length - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, length - 1)
    weight = (source - low).reshape([-1 if a == axis else 1
                                     for a in range(3)])
    image = (np.take(image, low, axis) * (1 - weight)
             + np.take(image, high, axis) * weight)
  return image


def encode(image, name):
  """uint8 `[H, W, 3]` -> file bytes in the format `name`'s extension says."""
  buffer = io.BytesIO()
  if name.lower().endswith((".jpg", ".jpeg")):
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
  else:
    Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _prepare_one(box, images_dir, output_dir, size, overwrite):
  """Crops one image; returns 'written', 'existing' or a skip reason."""
  target = os.path.join(output_dir, box.split, box.name)
  if not overwrite and os.path.exists(target):
    return "existing"
  try:
    with Image.open(os.path.join(images_dir, box.name)) as opened:
      # OpenCV's imread, which the reference used, applies EXIF orientation.
      image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
  except OSError as e:  # PIL's UnidentifiedImageError included
    return f"cannot be read as an image ({e})"
  crop = crop_padded(image, box.x0, box.y0, box.w, box.h)
  if min(crop.shape[:2]) < MIN_CROP_SIDE:
    return (f"crop {crop.shape[0]} x {crop.shape[1]} pixels is too small "
            f"(box x0 {box.x0}, y0 {box.y0}, w {box.w}, h {box.h} in a "
            f"{image.shape[0]} x {image.shape[1]} image)")
  resized = np.clip(np.round(resize_bilinear(crop, size)), 0, 255)
  atomic_files.write_bytes(target, encode(resized.astype(np.uint8), box.name))
  return "written"


def prepare_celeba(images_dir, bbox_file, output_dir, size=OUTPUT_SIZE,
                   overwrite=False, num_workers=None, progress_every=1000,
                   out=None):
  """Writes the CelebA face crops; returns counts.

  Args:
    images_dir: folder of the original CelebA images (`img_celeba`).
    bbox_file: the reference's `celeba_crop_bbox.txt` (`parse_bbox_file`).
    output_dir: gets `train/`, `val/`, `test/`.
    size: output side in pixels (128 as the reference).
    overwrite: rewrite outputs that exist (default: keep them, so an
      interrupted run resumes).
    num_workers: threads (default: one per core).
    progress_every: print progress every this many images.
    out: where progress goes (default: sys.stdout).

  Returns:
    {'written', 'existing', 'skipped'} counts, and 'skipped_files'
    {name: reason}.

  Raises:
    PrepareError: for a malformed box file or images missing from
      images_dir (all named, before anything is written).
  """
  boxes = parse_bbox_file(bbox_file)
  if not os.path.isdir(images_dir):
    raise PrepareError(f"--images {images_dir} is not a directory.")
  missing = [b.name for b in boxes
             if not os.path.isfile(os.path.join(images_dir, b.name))]
  if missing:
    raise PrepareError(
        f"{len(missing)} of the {len(boxes)} images listed in {bbox_file} "
        f"are missing from {images_dir}: {', '.join(missing[:5])}"
        + (" ..." if len(missing) > 5 else "") + ". Download the original "
        "(not aligned) CelebA images ('img_celeba') there.")
  out = out or sys.stdout
  counts = {"written": 0, "existing": 0, "skipped": 0}
  skipped = {}
  start = time.perf_counter()
  workers = num_workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = pool.map(
        lambda b: _prepare_one(b, images_dir, output_dir, size, overwrite),
        boxes)
    for done, (box, result) in enumerate(zip(boxes, results), 1):
      if result in counts:
        counts[result] += 1
      else:
        counts["skipped"] += 1
        skipped[box.name] = result
        print(f"Skipping {box.name}: {result}.", file=sys.stderr)
      if done % progress_every == 0 or done == len(boxes):
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"{done}/{len(boxes)} images ({rate:.0f}/s): "
              f"{counts['written']} written, {counts['existing']} already "
              f"there, {counts['skipped']} skipped", file=out, flush=True)
  return {**counts, "skipped_files": skipped}


DATASETS = ("celeba",)


def define_flags():
  """Command-line flags of the preparation CLI."""
  flags.DEFINE_string("images", None, "Folder of the original images.")
  flags.DEFINE_string("bbox_file", None,
                      "celeba_crop_bbox.txt from the reference repository.")
  flags.DEFINE_string("output_dir", None, "Where train/, val/, test/ go.")
  flags.DEFINE_integer("size", OUTPUT_SIZE, "Output side in pixels.")
  flags.DEFINE_bool("overwrite", False, "Rewrite outputs that exist.")
  flags.DEFINE_integer("num_workers", None, "Threads (default: cores).")


def main(argv):
  args = flags.FLAGS
  if len(argv) != 2 or argv[1] not in DATASETS:
    raise app.UsageError(f"Name one dataset: {', '.join(DATASETS)}, e.g. "
                         "`python -m tf_unsup3d.data.prepare celeba --images "
                         "DIR --bbox_file celeba_crop_bbox.txt --output_dir "
                         "data/celeba`.")
  if not (args.images and args.bbox_file and args.output_dir):
    raise app.UsageError("--images, --bbox_file and --output_dir are "
                         "required.")
  try:
    counts = prepare_celeba(args.images, args.bbox_file, args.output_dir,
                            args.size, args.overwrite, args.num_workers)
  except PrepareError as e:
    sys.exit(f"Error: {e}")
  print(f"Done: {args.output_dir}/{{train,val,test}}: {counts['written']} "
        f"written, {counts['existing']} kept, {counts['skipped']} skipped.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
