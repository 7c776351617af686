"""The demo on real photographs: face detection, box files, and the overview
page checked in a real browser (headless Chromium)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from tf_unsup3d import cropping
from tf_unsup3d import demo
from tf_unsup3d import preprocessing
from tf_unsup3d.export.serving import client

SIZE = 64
CAT_BOX = (100, 30, 300, 270)  # hand-picked on chelsea.png: ears to chin


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  data = pytest.importorskip("skimage.data")
  folder = tmp_path_factory.mktemp("photos")
  for name in ("astronaut", "chelsea"):
    PIL.Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
  return folder


@pytest.fixture(scope="module")
def predictor(tiny_model):
  return demo.Predictor(lambda x: tiny_model(x, training=False),
                        tiny_model.renderer)


def _input_png(output_dir, name):
  return np.asarray(PIL.Image.open(os.path.join(output_dir, name,
                                                "input.png")))


def _expected_input(photo, region):
  """The model input of a hand-made crop (no cropping module involved)."""
  top, left, height, width = region
  part = photo[top:top + height, left:left + width].astype(np.float32) / 255
  resized = preprocessing.center_crop_resize(part, SIZE).numpy()
  return np.round(resized * 255).astype(np.int64)


@pytest.fixture(scope="module")
def detected(photos, predictor, tmp_path_factory):
  pytest.importorskip("mtcnn", reason="optional extra: pip install -e .[faces]")
  framing = cropping.Framing(detect_faces=True)
  output_dir = str(tmp_path_factory.mktemp("detected"))
  done, skipped = demo.run_demo(predictor, demo.list_inputs(str(photos)),
                                output_dir, num_frames=2, framing=framing)
  return output_dir, done, skipped


@pytest.mark.slow
def test_face_photo_is_cropped_and_the_cat_is_skipped(photos, detected):
  output_dir, done, skipped = detected
  assert [name for name, _ in done] == ["astronaut"]
  assert len(skipped) == 1 and skipped[0][0].endswith("chelsea.png")
  assert "no face" in skipped[0][1]
  page = open(os.path.join(output_dir, "index.html")).read()
  assert "chelsea.png: no face" in page and "face (" in page
  # The input is the reference's square around the face: the face fills it
  # (a centre crop of the 512 px portrait would be mostly suit and flag).
  photo = np.asarray(PIL.Image.open(photos / "astronaut.png"))
  box = cropping.FaceDetector().largest_face(photo)
  x0, y0, w, h = box
  half = int((w + h) / 4 * 1.1)
  top, left = int(y0 + h / 2 + 0.15 * half) - half, int(x0 + w / 2) - half
  expected = _expected_input(photo, (top, left, 2 * half, 2 * half))
  got = _input_png(output_dir, "astronaut").astype(np.int64)
  assert np.abs(got - expected).max() <= 1


def test_boxes_crop_the_cat_and_unlisted_photos_follow_no_face(
    photos, predictor, tmp_path):
  boxes = tmp_path / "boxes.csv"
  boxes.write_text("file,x0,y0,width,height\nchelsea.png,%d,%d,%d,%d\n"
                   % CAT_BOX)
  framing = cropping.Framing(boxes_file=str(boxes), rule="box")
  output_dir = str(tmp_path / "out")
  done, skipped = demo.run_demo(predictor, demo.list_inputs(str(photos)),
                                output_dir, num_frames=2, framing=framing)
  assert [name for name, _ in done] == ["chelsea"]
  assert skipped[0][0].endswith("astronaut.png")
  assert "no box for 'astronaut.png'" in skipped[0][1]
  photo = np.asarray(PIL.Image.open(photos / "chelsea.png"))
  x0, y0, w, h = CAT_BOX
  expected = _expected_input(photo, (y0, x0, h, w))
  got = _input_png(output_dir, "chelsea").astype(np.int64)
  assert np.abs(got - expected).max() <= 1
  # Centre-cropped instead when asked.
  framing = cropping.Framing(boxes_file=str(boxes), rule="box",
                             no_face="centre")
  done, skipped = demo.run_demo(predictor, demo.list_inputs(str(photos)),
                                str(tmp_path / "out2"), num_frames=2,
                                framing=framing)
  assert len(done) == 2 and not skipped


def test_detect_faces_without_mtcnn_says_how_to_install(tmp_path):
  shadow = tmp_path / "shadow"
  shadow.mkdir()
  (shadow / "mtcnn.py").write_text("raise ImportError('no mtcnn here')\n")
  env = dict(os.environ, PYTHONPATH=f"{shadow}{os.pathsep}" +
             os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "tf_unsup3d.demo", f"--input={tmp_path}",
       f"--output_dir={tmp_path / 'out'}", "--saved_model=unused",
       "--detect_faces"], capture_output=True, text=True, env=env,
      timeout=300)
  assert result.returncode != 0
  assert 'pip install -e ".[faces]"' in result.stderr
  assert not (tmp_path / "out").exists()


def test_serving_client_sends_what_the_demo_uses(photos, predictor, tmp_path):
  boxes = tmp_path / "boxes.csv"
  boxes.write_text("chelsea.png,%d,%d,%d,%d\n" % CAT_BOX)
  for framing in (cropping.Framing(boxes_file=str(boxes), rule="box"),
                  cropping.Framing(boxes_file=str(boxes))):
    paths = demo.list_inputs(str(photos))
    data, sent, skipped = client.framed_files(paths, framing)
    assert [p for p, _ in skipped] == [str(photos / "astronaut.png")]
    assert len(data) == 1 and sent[0][0].endswith("chelsea.png")
    # What the server's bytes signature makes of it (its preprocessing).
    served = preprocessing.decode_image(data[0], SIZE).numpy()
    output_dir = str(tmp_path / framing.rule)
    demo.run_demo(predictor, paths, output_dir, num_frames=2,
                  framing=framing)
    used = _input_png(output_dir, "chelsea").astype(np.float32) / 255
    assert np.abs(served - used).max() <= 1 / 255 + 1e-6
  # Without framing the files go as they are.
  data, sent, _ = client.framed_files([str(photos / "chelsea.png")],
                                      cropping.Framing())
  assert data[0] == (photos / "chelsea.png").read_bytes()


# --- The page in a browser --------------------------------------------------

BACKGROUND = np.array([0xf4, 0xf4, 0xf4])
WINDOW = (1400, 1000)


def _chromium():
  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  pytest.skip("no Chromium here (Debian: apt-get install chromium); "
              ".ci/run installs it")


def _screenshot(page, path):
  subprocess.run(
      [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
       "--hide-scrollbars", "--virtual-time-budget=3000",
       f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={path}",
       f"file://{page}"], check=True, capture_output=True, timeout=120)
  return np.asarray(PIL.Image.open(path).convert("RGB")).astype(np.int64)


def _drawn_pixels(shot):
  return int((np.abs(shot - BACKGROUND).max(-1) > 3).sum())


def _expected_drawn(output_dir, names):
  """Pixels the page's images cover where they differ from the page."""
  total = 0
  for name in names:
    for c in demo.PICTURES + demo.TURNTABLES:
      ext = "gif" if c in demo.TURNTABLES else "png"
      image = PIL.Image.open(os.path.join(output_dir, name, f"{c}.{ext}"))
      pixels = np.asarray(image.convert("RGB")).astype(np.int64)
      share = (np.abs(pixels - BACKGROUND).max(-1) > 3).mean()
      total += share * 112 * 112  # the page shows each at 112 x 112 px
  return total


@pytest.mark.slow
def test_index_html_draws_every_image_and_fits_the_window(
    photos, predictor, tmp_path):
  output_dir = tmp_path / "out"
  framing = cropping.Framing(boxes_file=None)
  done, _ = demo.run_demo(predictor, demo.list_inputs(str(photos)),
                          str(output_dir), num_frames=2, framing=framing)
  names = [name for name, _ in done]
  page = output_dir / "index.html"
  shot = _screenshot(page, tmp_path / "page.png")
  expected = _expected_drawn(str(output_dir), names)
  drawn = _drawn_pixels(shot)
  assert drawn >= 0.9 * expected, (drawn, expected)
  # Nothing reaches the window's right edge: no column is cut off.
  right = np.abs(shot[:, -12:] - BACKGROUND).max()
  assert right <= 3, "the page is wider than the window"
  # The check notices a single image that does not draw.
  os.remove(output_dir / names[0] / "albedo.png")
  broken = _drawn_pixels(_screenshot(page, tmp_path / "broken.png"))
  share = (drawn - broken) / (112 * 112)
  assert share > 0.5, (drawn, broken)
