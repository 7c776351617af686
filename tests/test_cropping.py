"""Boxes to crops: the reference demo's rule, edge padding, box files, and
MTCNN on real photographs (scikit-image's astronaut and cat)."""

import numpy as np
import pytest

from tf_unsup3d import cropping


def test_reference_rule_against_a_hand_computation():
  # Box 83 x 107 at (182, 64): half side int((83 + 107) / 4 * 1.1) = 52;
  # centre (223.5, 117.5); top int(117.5 + 0.15 * 52) - 52 = 125 - 52 = 73;
  # left int(223.5) - 52 = 171.
  assert cropping.reference_square((182, 64, 83, 107)) == (73, 171, 104, 104)
  # A square box at the origin: half int(10 * 1.1) = 11, centre (10, 10),
  # top int(10 + 1.65) - 11 = 0, left 10 - 11 = -1 (past the edge).
  assert cropping.reference_square((0, 0, 20, 20)) == (0, -1, 22, 22)


def test_reference_rule_matches_padding_then_cropping():
  # The reference pads by the half side with edge replication, then slices
  # the padded photo; `crop` must give the same pixels without the padding.
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
  for box in [(5, 3, 20, 25), (45, 20, 14, 30), (-4, -6, 30, 18)]:
    x0, y0, w, h = box
    half = int((w + h) / 2 / 2 * 1.1)
    padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="edge")
    hc, wc = y0 + h / 2, x0 + w / 2
    r0, c0 = int(hc + half * 0.15), int(wc)
    expected = padded[r0:r0 + 2 * half, c0:c0 + 2 * half]
    got = cropping.crop(image, cropping.reference_square(box))
    np.testing.assert_array_equal(got, expected)


def test_crop_repeats_edges_and_allocates_only_the_crop():
  image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
  got = cropping.crop(image, (-1, 2, 3, 4))[..., 0]
  np.testing.assert_array_equal(got, [[2, 3, 3, 3], [2, 3, 3, 3],
                                      [6, 7, 7, 7]])
  far = cropping.crop(image, (10**9, -10**9, 2, 2))  # no huge padding
  np.testing.assert_array_equal(far[..., 0], [[8, 8], [8, 8]])


def test_box_rule_crops_the_box_as_given():
  image = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6, 1)
  region = cropping.region_for((1, 2, 3, 2), "box")
  assert region == (2, 1, 2, 3)
  np.testing.assert_array_equal(cropping.crop(image, region), image[2:4, 1:4])
  with pytest.raises(cropping.BoxError, match="unknown box rule"):
    cropping.region_for((1, 2, 3, 2), "square")
  with pytest.raises(cropping.BoxError, match="positive"):
    cropping.region_for((1, 2, 0, 2), "box")


def test_read_boxes(tmp_path):
  path = tmp_path / "boxes.csv"
  path.write_text("file,x0,y0,width,height\ncat.png, 100, 30, 300, 270\n\n"
                  "b.jpg,1.5,2,3,4\n")
  assert cropping.read_boxes(str(path)) == {
      "cat.png": (100.0, 30.0, 300.0, 270.0), "b.jpg": (1.5, 2.0, 3.0, 4.0)}
  path.write_text("cat.png,100,30,300\n")
  with pytest.raises(cropping.BoxError, match="line 1: expected 5 columns"):
    cropping.read_boxes(str(path))
  path.write_text("cat.png,100,30,300,x\n")
  with pytest.raises(cropping.BoxError, match="line 1"):
    cropping.read_boxes(str(path))
  path.write_text("a.png,1,1,2,2\na.png,1,1,3,3\n")
  with pytest.raises(cropping.BoxError, match="line 2: 'a.png' has a box"):
    cropping.read_boxes(str(path))


class _Detector:
  """A stand-in detector that returns a fixed answer."""

  def __init__(self, box):
    self.box = box

  def largest_face(self, image):
    del image
    return self.box


def test_frame_follows_box_then_detector_then_policy():
  image = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3) % 251
  image = image.astype(np.uint8)
  box = (10, 5, 20, 20)
  got, how = cropping.frame(image, box=box, rule="box")
  np.testing.assert_array_equal(got, image[5:25, 10:30])
  assert how.startswith("box (10, 5, 20 x 20)")
  # A given box wins over the detector.
  got, how = cropping.frame(image, box=box, detector=_Detector((0, 0, 4, 4)))
  np.testing.assert_array_equal(
      got, cropping.crop(image, cropping.reference_square(box)))
  got, how = cropping.frame(image, detector=_Detector(box))
  assert how.startswith("face") and got.shape == (22, 22, 3)
  with pytest.raises(cropping.NoFaceError, match="no face"):
    cropping.frame(image, detector=_Detector(None))
  got, how = cropping.frame(image, detector=_Detector(None), no_face="centre")
  assert got.shape == image.shape and "centre" in how
  with pytest.raises(ValueError, match="no_face"):
    cropping.frame(image, detector=_Detector(None), no_face="center")


class _Detections:
  """A stand-in for `mtcnn.MTCNN`: fixed detections, and the image it got."""

  def __init__(self, faces):
    self.faces = faces
    self.images = []

  def detect_faces(self, image):
    self.images.append(image)
    return self.faces


def _face_detector(faces):
  detector = object.__new__(cropping.FaceDetector)  # no mtcnn needed
  detector._mtcnn = _Detections(faces)  # pylint: disable=protected-access
  detector.min_confidence = 0.9
  return detector


def test_largest_confident_face_is_chosen():
  faces = [{"box": [10, 10, 20, 30], "confidence": 0.95},   # 600 px
           {"box": [0, 0, 50, 50], "confidence": 0.5},      # largest, unsure
           {"box": [40, 5, 25, 25], "confidence": 0.99},    # 625 px
           {"box": [2, 3, 24, 25], "confidence": 0.9}]      # 600 px
  detector = _face_detector(faces)
  assert detector.largest_face(np.zeros((60, 70, 3), np.uint8)) == (
      40.0, 5.0, 25.0, 25.0)
  assert _face_detector(faces[1:2]).largest_face(
      np.zeros((60, 70, 3), np.uint8)) is None
  assert _face_detector([]).largest_face(
      np.zeros((60, 70, 3), np.uint8)) is None
  # Floats in [0, 1] reach MTCNN as the uint8 photo they stand for.
  photo = np.linspace(0.0, 1.0, 4 * 5 * 3).reshape(4, 5, 3)
  detector.largest_face(photo)
  sent = detector._mtcnn.images[-1]  # pylint: disable=protected-access
  assert sent.dtype == np.uint8
  np.testing.assert_array_equal(sent, np.round(photo * 255).astype(np.uint8))


def _photo(name):
  data = pytest.importorskip("skimage.data")
  return getattr(data, name)()


def _iou(a, b):
  ax, ay, aw, ah = a
  bx, by, bw, bh = b
  w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
  h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
  return w * h / (aw * ah + bw * bh - w * h)


@pytest.fixture(scope="module")
def detector():
  pytest.importorskip("mtcnn", reason="optional extra: pip install -e .[faces]")
  return cropping.FaceDetector()


@pytest.mark.slow
def test_mtcnn_finds_the_astronauts_face_and_no_face_in_the_cat(detector):
  # Hand-checked on the photo: the face from brows to chin, cheek to cheek,
  # and its features (eyes, mouth corners, chin) as (x, y).
  hand = (183, 85, 82, 88)
  features = [(205, 100), (245, 101), (203, 139), (244, 140), (224, 168)]
  box = detector.largest_face(_photo("astronaut"))
  assert box is not None and _iou(box, hand) > 0.6, box
  top, left, side, _ = cropping.reference_square(box)
  for x, y in features:  # well inside the square crop
    assert left + 0.1 * side < x < left + 0.9 * side, (x, left, side)
    assert top + 0.1 * side < y < top + 0.95 * side, (y, top, side)
  assert detector.largest_face(_photo("chelsea")) is None
