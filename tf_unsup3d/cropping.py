"""Object boxes in photos: face detection, box files and the crop rules.

A photo in the wild shows the object small or off-centre; the model wants it
filling a square. A box comes from a face detector (`FaceDetector`, MTCNN
from the optional `mtcnn` package) or from a CSV file (`read_boxes`), and
becomes a square crop by the reference demo's rule (`reference_square`) or
is used as given (`box_region`). Crops reaching past the photo's edge repeat
its border pixels (`crop`). All coordinates are pixels of the photo; a box
is (x0, y0, width, height), a region (top, left, height, width).
"""

import csv
import math
import os

from absl import flags
import numpy as np

from tf_unsup3d import shapes

BOX_RULES = ("reference", "box")
NO_FACE_POLICIES = ("skip", "centre")
FACES_EXTRA = 'pip install -e ".[faces]"  (or: pip install mtcnn==1.0.0)'


class BoxError(ValueError):
  """A box file or a box that cannot be used; the message says which."""


class NoFaceError(ValueError):
  """The face detector found no face in a photo."""


def _check_box(box):
  x0, y0, width, height = (float(v) for v in box)
  if not all(math.isfinite(v) for v in (x0, y0, width, height)):
    raise BoxError(f"box {tuple(box)} has a non-finite value.")
  if width <= 0 or height <= 0:
    raise BoxError(f"box {tuple(box)}: width and height must be positive.")
  return x0, y0, width, height


def reference_square(box):
  """The square around a face box that the reference demo crops.

  Side 1.1 x the mean of the box's width and height (rounded down to an
  even number of pixels), centred on the box horizontally and shifted down
  by 15% of half the side, so that the chin and some hair are in.

  Args:
    box: (x0, y0, width, height) in pixels.

  Returns:
    (top, left, side, side) in pixels; may reach past the photo's edges.
  """
  x0, y0, width, height = _check_box(box)
  half = int((width + height) / 2 / 2 * 1.1)
  if half < 1:
    raise BoxError(f"box {tuple(box)} is too small to crop.")
  xc, yc = x0 + width / 2, y0 + height / 2
  # Truncated where the reference truncates, so the crops agree pixel for
  # pixel.
  top = int(yc + half * 0.15) - half
  left = int(xc) - half
  return top, left, 2 * half, 2 * half


def box_region(box):
  """The box itself as a region: (top, left, height, width), rounded."""
  x0, y0, width, height = _check_box(box)
  top, left = int(round(y0)), int(round(x0))
  bottom, right = int(round(y0 + height)), int(round(x0 + width))
  if bottom <= top or right <= left:
    raise BoxError(f"box {tuple(box)} covers no whole pixel.")
  return top, left, bottom - top, right - left


def region_for(box, rule):
  """The region a box gives under `rule` ('reference' or 'box')."""
  if rule == "reference":
    return reference_square(box)
  if rule == "box":
    return box_region(box)
  raise BoxError(f"unknown box rule {rule!r}: use one of {BOX_RULES}.")


def crop(image, region):
  """Crops `image` `[H, W, C]` to `region`, repeating edge pixels outside.

  Args:
    image: `[H, W, C]` array (any dtype).
    region: (top, left, height, width) in pixels; may reach past the edges.

  Returns:
    `[height, width, C]` array of the image's dtype. Only the crop is
    allocated, however far the region reaches outside.
  """
  image = np.asarray(image)
  shapes.check_shape(image, "image", ("H", "W", "C"))
  top, left, height, width = (int(v) for v in region)
  if height < 1 or width < 1:
    raise BoxError(f"region {tuple(region)} is empty.")
  rows = np.clip(np.arange(top, top + height), 0, image.shape[0] - 1)
  cols = np.clip(np.arange(left, left + width), 0, image.shape[1] - 1)
  return image[rows[:, None], cols[None, :]]


def read_boxes(path):
  """Reads a box file: {file name: (x0, y0, width, height)}.

  CSV rows `file name, x0, y0, width, height` in pixels of that photo; an
  optional header row starting with `file` and blank lines are skipped.

  Raises:
    FileNotFoundError: no such file.
    BoxError: a malformed row (named by line number) or a repeated name.
  """
  boxes = {}
  with open(path, newline="") as f:
    for line, row in enumerate(csv.reader(f), start=1):
      if not row or not "".join(row).strip():
        continue
      if line == 1 and row[0].strip().lower().startswith("file"):
        continue
      if len(row) != 5:
        raise BoxError(f"{path}, line {line}: expected 5 columns (file name, "
                       f"x0, y0, width, height), got {len(row)}: {row}")
      name = row[0].strip()
      try:
        box = _check_box(float(v) for v in row[1:])
      except ValueError as e:
        raise BoxError(f"{path}, line {line}: {e}") from None
      if name in boxes:
        raise BoxError(f"{path}, line {line}: {name!r} has a box already.")
      boxes[name] = box
  return boxes


class FaceDetector:
  """The largest face in a photo, by MTCNN (`mtcnn` package, weights inside).

  Built lazily: constructing it imports `mtcnn` and loads its networks
  (about a second here), and raises ImportError with the install command
  when the package is missing.
  """

  def __init__(self, min_confidence=0.9):
    """`min_confidence`: detections below this score are not faces."""
    try:
      from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("Face detection needs the optional mtcnn package: "
                        f"{FACES_EXTRA}") from e
    self._mtcnn = MTCNN()
    self.min_confidence = float(min_confidence)

  def largest_face(self, image):
    """The largest face's box (x0, y0, width, height), or None (no face).

    `image`: `[H, W, 3]` RGB, uint8 or floats in [0, 1].
    """
    image = np.asarray(image)
    shapes.check_shape(image, "image", ("H", "W", 3), "RGB")
    if image.dtype != np.uint8:  # floats in [0, 1]
      image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    faces = [f for f in self._mtcnn.detect_faces(image)
             if f["confidence"] >= self.min_confidence]
    if not faces:
      return None
    box = max(faces, key=lambda f: f["box"][2] * f["box"][3])["box"]
    return tuple(float(v) for v in box)


def frame(image, box=None, detector=None, rule="reference", no_face="skip"):
  """Crops a photo to its object, the way the demo and the client do.

  With a `box` it is cropped by `rule`; else with a `detector` the largest
  face's box is (by `rule` too); else the photo is returned whole (the
  model's preprocessing then centre-crops it to a square).

  Args:
    image: `[H, W, 3]` RGB photo, uint8 or floats in [0, 1].
    box: (x0, y0, width, height) in pixels, or None.
    detector: a `FaceDetector`, or None.
    rule: 'reference' (the reference demo's square) or 'box' (as given).
    no_face: when the detector finds no face, 'skip' (raise NoFaceError) or
      'centre' (return the photo whole).

  Returns:
    (crop `[h, w, 3]` of the image's dtype, a short description of how it
    was framed).
  """
  if no_face not in NO_FACE_POLICIES:
    raise ValueError(f"no_face must be one of {NO_FACE_POLICIES}, got "
                     f"{no_face!r}.")
  how = "box"
  if box is None and detector is not None:
    box = detector.largest_face(image)
    if box is None:
      if no_face == "skip":
        raise NoFaceError("no face found (--no_face=centre centre-crops such "
                          "photos instead)")
      return np.asarray(image), "no face found: centre crop"
    how = "face"
  if box is None:
    return np.asarray(image), "centre crop"
  region = region_for(box, rule)
  x0, y0, width, height = _check_box(box)
  return crop(image, region), (
      f"{how} ({x0:.0f}, {y0:.0f}, {width:.0f} x {height:.0f}), {rule} rule")


class Framing:
  """How the demo and the serving client frame each photo (`frame`)."""

  def __init__(self, detect_faces=False, boxes_file=None, rule="reference",
               no_face="skip", detector=None):
    """Reads the box file and builds the detector (clear errors if needed).

    Args:
      detect_faces: find the largest face in photos without a box.
      boxes_file: CSV of boxes (`read_boxes`), keyed by file name.
      rule, no_face: as `frame`; `no_face` also applies to photos that the
        box file does not list when there is no detector.
      detector: a `FaceDetector` to use (default: built if detect_faces).
    """
    if rule not in BOX_RULES:
      raise BoxError(f"unknown box rule {rule!r}: use one of {BOX_RULES}.")
    if no_face not in NO_FACE_POLICIES:
      raise ValueError(f"no_face must be one of {NO_FACE_POLICIES}, got "
                       f"{no_face!r}.")
    self.boxes_file = boxes_file
    self.boxes = read_boxes(boxes_file) if boxes_file else None
    self.detector = detector or (FaceDetector() if detect_faces else None)
    self.rule, self.no_face = rule, no_face

  @property
  def active(self):
    """False when photos go to the model whole (the default)."""
    return self.boxes is not None or self.detector is not None

  def __call__(self, path, image):
    """(crop, description) of the photo at `path` (`[H, W, 3]`)."""
    box = None
    if self.boxes is not None:
      box = self.boxes.get(os.path.basename(path))
      if box is None and self.detector is None:
        if self.no_face == "skip":
          raise BoxError(f"no box for {os.path.basename(path)!r} in "
                         f"{self.boxes_file} (--no_face=centre centre-crops "
                         "such photos instead)")
        return np.asarray(image), "no box: centre crop"
    return frame(image, box, self.detector, self.rule, self.no_face)


def define_flags():
  """The framing flags of the demo and the serving client, defined once."""
  flags.DEFINE_bool("detect_faces", False, "Crop each photo around its "
                    "largest face (MTCNN; needs the [faces] extra), by the "
                    "reference demo's rule.")
  flags.DEFINE_string("boxes", None, "CSV of object boxes (file name, x0, "
                      "y0, width, height in pixels) for photos of any "
                      "category; a listed box wins over --detect_faces.")
  flags.DEFINE_enum("box_rule", "reference", BOX_RULES, "reference: the "
                    "square the reference demo crops around a face box; "
                    "box: the box as given.")
  flags.DEFINE_enum("no_face", "skip", NO_FACE_POLICIES, "A photo without a "
                    "face (or box): skip it (listed in the summary), or "
                    "centre-crop it.")


def framing_from_flags():
  """The `Framing` that `define_flags`' flags ask for."""
  args = flags.FLAGS
  return Framing(args.detect_faces, args.boxes, args.box_rule, args.no_face)
