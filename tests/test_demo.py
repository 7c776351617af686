"""The demo on odd inputs: every result file exists and reads back."""

import html
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import trimesh

from tf_unsup3d import demo
from tf_unsup3d import preprocessing
from tf_unsup3d.data import datasets

NUM_FRAMES = 3
SIZE = 64
PNGS = demo.PICTURES + ("depth16", "mesh_albedo")


def _save(path, array, mode=None):
  PIL.Image.fromarray(array, mode).save(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A folder of odd images (and one corrupt file); returns (folder, names)."""
  folder = tmp_path_factory.mktemp("inputs")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (37, 53, 3), np.uint8)
  _save(folder / "odd.jpg", rgb)
  _save(folder / "gray.png", rgb[..., 0])
  _save(folder / "rgba.png", np.dstack([rgb, rgb[..., :1]]))
  deep = rng.integers(0, 65536, (53, 37, 1)).astype(np.uint16)
  (folder / "deep16.png").write_bytes(tf.io.encode_png(deep).numpy())
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  (folder / "notes.txt").write_text("not an image extension: ignored")
  return folder, ["deep16", "gray", "odd", "rgba"]


@pytest.fixture(scope="module")
def results(inputs, tiny_model, tmp_path_factory):
  folder, _ = inputs
  predict = lambda x: tiny_model(x, training=False)
  predictor = demo.Predictor(predict, tiny_model.renderer)
  output_dir = str(tmp_path_factory.mktemp("demo"))
  done, skipped = demo.run_demo(predictor, demo.list_inputs(str(folder)),
                                output_dir, num_frames=NUM_FRAMES)
  return output_dir, done, skipped


def test_the_corrupt_file_is_reported_and_skipped(inputs, results):
  _, names = inputs
  output_dir, done, skipped = results
  assert [name for name, _ in done] == names
  assert [os.path.basename(p) for p, _ in skipped] == ["broken.png"]
  assert not os.path.exists(os.path.join(output_dir, "broken"))
  assert "broken.png" in open(os.path.join(output_dir, "index.html")).read()


def test_every_picture_is_a_readable_png(inputs, results):
  _, names = inputs
  output_dir = results[0]
  for name in names:
    for picture in PNGS:
      data = open(os.path.join(output_dir, name, f"{picture}.png"), "rb").read()
      image = tf.io.decode_png(data, dtype=tf.uint16 if picture == "depth16"
                               else tf.uint8)
      assert image.shape[:2] == (SIZE, SIZE), (name, picture)


def test_depth16_encodes_the_canonical_depth(inputs, results, tiny_model):
  folder, names = inputs
  output_dir = results[0]
  data = (folder / f"{names[0]}.png").read_bytes()
  image = preprocessing.decode_image(data, SIZE)[None]
  expected = tiny_model(image)["canon_depth"][0]
  png = open(os.path.join(output_dir, names[0], "depth16.png"), "rb").read()
  depth = datasets.decode_depth(png, tiny_model.min_depth,
                                tiny_model.max_depth)
  # 16 bits over 0.2 scene units: 3e-6 per step.
  np.testing.assert_allclose(depth, expected, atol=1e-5)


def test_turntables_have_every_frame(inputs, results):
  _, names = inputs
  output_dir = results[0]
  for name in names:
    for gif in demo.TURNTABLES:
      data = open(os.path.join(output_dir, name, f"{gif}.gif"), "rb").read()
      frames = tf.io.decode_gif(data)
      assert frames.shape == (NUM_FRAMES, SIZE, SIZE, 3), (name, gif)


def test_meshes_load_back_with_every_vertex(inputs, results):
  _, names = inputs
  output_dir = results[0]
  for name in names:
    folder = os.path.join(output_dir, name)
    obj = trimesh.load(os.path.join(folder, "mesh.obj"), process=False)
    assert obj.vertices.shape == (SIZE * SIZE, 3)
    assert obj.faces.shape == (2 * (SIZE - 1) ** 2, 3)
    assert obj.visual.uv.shape == (SIZE * SIZE, 2)
    assert obj.visual.material.image.size == (SIZE, SIZE)
    glb = trimesh.load(os.path.join(folder, "mesh.glb"), process=False)
    mesh = glb.dump(concatenate=True) if isinstance(glb, trimesh.Scene) else glb
    assert mesh.vertices.shape == (SIZE * SIZE, 3)
    np.testing.assert_allclose(mesh.vertices, obj.vertices, atol=1e-5)
    # Faces point towards the viewer (+z), as viewers expect.
    assert np.mean(obj.face_normals[:, 2] > 0) > 0.9


def test_index_html_references_every_result(inputs, results):
  _, names = inputs
  output_dir = results[0]
  page = open(os.path.join(output_dir, "index.html")).read()
  for name in names:
    for picture in demo.PICTURES:
      assert f'src="{name}/{picture}.png"' in page
    for gif in demo.TURNTABLES:
      assert f'src="{name}/{gif}.gif"' in page
    for link in ("mesh.obj", "mesh.glb", "depth16.png"):
      assert f'href="{name}/{link}"' in page


def test_no_temporary_files_are_left(results):
  output_dir = results[0]
  leftovers = [f for _, _, files in os.walk(output_dir) for f in files
               if f.endswith(".tmp")]
  assert not leftovers


def test_output_names_are_distinct_and_safe():
  names = demo.output_names(["a/x y.png", "b/x y.jpg", "c/x_y.png", "ü.png",
                             "index.html.png", "...png", ".hidden.jpg",
                             "Photo.png", "photo.jpg"])
  assert len({n.lower() for n in names}) == len(names)
  # No dot: never index.html, '.', '..' or a hidden folder.
  assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names)


def test_an_input_named_like_the_overview_page(tiny_model, tmp_path):
  """Inputs named `index.html.png` and `index.png` get result folders other
  than `index.html`, so the overview page is still written at the end."""
  folder = tmp_path / "in"
  folder.mkdir()
  pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8)
  _save(folder / "index.html.png", pixels)
  _save(folder / "index.png", pixels)
  predictor = demo.Predictor(lambda x: tiny_model(x, training=False),
                             tiny_model.renderer)
  output_dir = tmp_path / "out"
  done, skipped = demo.run_demo(predictor, demo.list_inputs(str(folder)),
                                str(output_dir), num_frames=1)
  assert not skipped and len(done) == 2
  assert (output_dir / "index.html").is_file()
  page = (output_dir / "index.html").read_text()
  for name, source in done:
    assert (output_dir / name / "mesh.obj").is_file(), name
    assert f'href="{name}/mesh.obj"' in page
    assert os.path.basename(source) in page


def test_a_skipped_file_is_named_once_with_a_readable_reason(tiny_model,
                                                              tmp_path,
                                                              capsys):
  """A truncated PNG (the decoder refuses it) and a text file named .jpg
  (the format check refuses it): each is warned about once, naming the
  file, its reason plain text (no b'...' literal, no TensorFlow op label),
  and the page lists that same reason."""
  folder = tmp_path / "in"
  folder.mkdir()
  pixels = np.random.default_rng(4).integers(0, 256, (64, 64, 3), np.uint8)
  _save(folder / "good.png", pixels)
  png = (folder / "good.png").read_bytes()
  (folder / "truncated.png").write_bytes(png[:len(png) // 2])
  (folder / "notes.jpg").write_bytes(b"just some text, not an image")
  predictor = demo.Predictor(lambda x: tiny_model(x, training=False),
                             tiny_model.renderer)
  capsys.readouterr()
  done, skipped = demo.run_demo(predictor, demo.list_inputs(str(folder)),
                                str(tmp_path / "out"), num_frames=1)
  printed = capsys.readouterr()
  assert [name for name, _ in done] == ["good"]
  reasons = {os.path.basename(p): r for p, r in skipped}
  assert sorted(reasons) == ["notes.jpg", "truncated.png"]
  page = (tmp_path / "out" / "index.html").read_text()
  for name, reason in reasons.items():
    assert isinstance(reason, str) and reason.isprintable() and reason
    for raw in ("b'", 'b"', "{{", "[Op:", "Summarized data"):
      assert raw not in reason, (name, reason)
    lines = [l for l in (printed.out + printed.err).splitlines() if name in l]
    assert lines == [f"Skipping {folder / name}: {reason}"]
    assert page.count(name) == 1 and html.escape(reason) in page
  assert "Not an image" in reasons["notes.jpg"]
  assert "PNG" in reasons["truncated.png"]


def check_results_at(folder, size, num_frames):
  """Every picture, turntable and mesh of one demo result is `size` px."""
  for picture in PNGS:
    data = open(os.path.join(folder, f"{picture}.png"), "rb").read()
    image = tf.io.decode_png(data, dtype=tf.uint16 if picture == "depth16"
                             else tf.uint8)
    assert image.shape[:2] == (size, size), picture
  for gif in demo.TURNTABLES:
    data = open(os.path.join(folder, f"{gif}.gif"), "rb").read()
    assert tf.io.decode_gif(data).shape == (num_frames, size, size, 3), gif
  obj = trimesh.load(os.path.join(folder, "mesh.obj"), process=False)
  assert obj.vertices.shape == (size * size, 3)
  assert obj.faces.shape == (2 * (size - 1) ** 2, 3)
  assert obj.visual.material.image.size == (size, size)


def test_demo_at_128_pixels(inputs, tmp_path):
  """A 128-px model: the photo is resized to 128, not 64, and every result
  is 128 px, its depth16 the model's canonical depth of that input."""
  # pylint: disable-next=g-import-not-at-top
  from tf_unsup3d import model as model_lib
  folder, _ = inputs
  model = model_lib.Unsup3D(image_size=128, nf=8, zdim=16, light_view_nf=8,
                            conf_zdim=16, lam_perc=0.0)
  predictor = demo.Predictor(lambda x: model(x, training=False),
                             model.renderer)
  done, skipped = demo.run_demo(predictor, [str(folder / "odd.jpg")],
                                str(tmp_path), num_frames=NUM_FRAMES)
  assert not skipped and [name for name, _ in done] == ["odd"]
  check_results_at(tmp_path / "odd", 128, NUM_FRAMES)
  data = (folder / "odd.jpg").read_bytes()
  expected = model(preprocessing.decode_image(data, 128)[None])
  png = (tmp_path / "odd" / "depth16.png").read_bytes()
  np.testing.assert_allclose(
      datasets.decode_depth(png, model.min_depth, model.max_depth),
      expected["canon_depth"][0], atol=1e-5)


@pytest.mark.slow
def test_command_line_with_a_checkpoint(inputs, tiny_model, tmp_path):
  folder, _ = inputs
  weights = str(tmp_path / "tiny.weights.h5")
  tiny_model.save_weights(weights)
  output_dir = str(tmp_path / "out")
  params = ["Unsup3D.nf = 8", "Unsup3D.zdim = 16", "Unsup3D.light_view_nf = 8",
            "Unsup3D.conf_zdim = 16", "Unsup3D.lam_perc = 0.0"]
  command = [sys.executable, "-m", "tf_unsup3d.demo",
             f"--input={folder / 'odd.jpg'}", f"--output_dir={output_dir}",
             f"--checkpoint={weights}", "--num_frames=2"]
  command += [f"--gin_param={p}" for p in params]
  run = subprocess.run(command, capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert run.returncode == 0, run.stderr[-2000:]
  assert "1 images" in run.stdout
  assert os.path.isfile(os.path.join(output_dir, "odd", "mesh.glb"))
  bad = subprocess.run(command[:3] + [f"--input={folder / 'broken.png'}"] +
                       command[4:], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert bad.returncode == 0
  assert "Skipping" in bad.stderr and "broken.png" in bad.stderr
  # Named once, in its warning; the summary only counts.
  assert (bad.stdout + bad.stderr).count("broken.png") == 1
  assert "b'" not in bad.stderr and "0 images" in bad.stdout


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
