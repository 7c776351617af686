"""The bundled gin configs: found by name, and faithful to the paper's settings."""

import os
import subprocess
import sys
import zipfile

import gin
import pytest

from tf_unsup3d import gin_configs
from tf_unsup3d import model  # noqa: F401  (registers Unsup3D)
from tf_unsup3d import train  # noqa: F401  (registers train, generate_synthetic)
from tf_unsup3d.data import datasets  # noqa: F401  (registers make_dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# DESIGN section 6, one row per line of its table, transcribed value by
# value (the reference's experiments/train_*.yml).
PAPER = {
    "celeba": {
        "Unsup3D.image_size": 64, "make_dataset.image_size": 64,
        "train.batch_size": 64, "train.num_epochs": 30,
        "make_dataset.crop_spec": None,
        "Unsup3D.lam_perc": 1.0, "Unsup3D.lam_flip": 0.5,
        "Unsup3D.lam_depth_sm": 0.0, "Unsup3D.use_conf_map": True,
        "Unsup3D.amb_light_range": (0.0, 1.0),
        "Unsup3D.diff_light_range": (0.0, 1.0),
        "Unsup3D.border_depth": None,
        "Unsup3D.xyz_rotation_range": 60.0,
        "Unsup3D.xy_translation_range": 0.1,
        "Unsup3D.z_translation_range": 0.0,
        "make_dataset.layout": "folder",
    },
    "synface": {
        "Unsup3D.image_size": 64, "make_dataset.image_size": 64,
        "train.batch_size": 64, "train.num_epochs": 30,
        "make_dataset.crop_spec": 170,
        "Unsup3D.lam_perc": 1.0, "Unsup3D.lam_flip": 0.5,
        "Unsup3D.lam_depth_sm": 0.0, "Unsup3D.use_conf_map": True,
        "Unsup3D.amb_light_range": (0.0, 1.0),
        "Unsup3D.diff_light_range": (0.0, 1.0),
        "Unsup3D.border_depth": None,
        "Unsup3D.xyz_rotation_range": 60.0,
        "Unsup3D.xy_translation_range": 0.1,
        "Unsup3D.z_translation_range": 0.0,
        "make_dataset.layout": "paired",
    },
    "cats": {
        "Unsup3D.image_size": 64, "make_dataset.image_size": 64,
        "train.batch_size": 64, "train.num_epochs": 200,
        "make_dataset.crop_spec": 170,
        "Unsup3D.lam_perc": 1.0, "Unsup3D.lam_flip": 0.5,
        "train.lam_flip_start_epoch": 10,
        "Unsup3D.lam_depth_sm": 0.0, "Unsup3D.use_conf_map": True,
        "Unsup3D.amb_light_range": (0.0, 1.0),
        "Unsup3D.diff_light_range": (0.0, 1.0),
        "Unsup3D.border_depth": None,
        "Unsup3D.xyz_rotation_range": 60.0,
        "Unsup3D.xy_translation_range": 0.1,
        "Unsup3D.z_translation_range": 0.1,
        "make_dataset.layout": "folder",
    },
    "cars": {
        "Unsup3D.image_size": 64, "make_dataset.image_size": 64,
        "train.batch_size": 64, "train.num_epochs": 100,
        "make_dataset.crop_spec": (8, 14, 100, 100),
        "Unsup3D.lam_perc": 0.01, "Unsup3D.lam_flip": 1.0,
        "Unsup3D.lam_depth_sm": 0.1, "Unsup3D.use_conf_map": False,
        "Unsup3D.amb_light_range": (0.0, 1.0),
        "Unsup3D.diff_light_range": (0.5, 1.0),
        "Unsup3D.border_depth": 1.08,
        "Unsup3D.xyz_rotation_range": 60.0,
        "Unsup3D.xy_translation_range": 0.1,
        "Unsup3D.z_translation_range": 0.0,
        "make_dataset.layout": "folder",
    },
}

# The 128-pixel variants: the same settings at image_size 128, with the
# paper's perceptual layer. Cars are left out: their crop (100 x 100) is
# smaller than 128.
AT_128 = {"Unsup3D.image_size": 128, "make_dataset.image_size": 128,
          "Unsup3D.vgg_layer": "relu3_3"}
PAPER_128 = {f"{name}_128": dict(PAPER[name], **AT_128)
             for name in ("celeba", "synface", "cats")}
# Each 128 config -> its 64 config and the bindings that may differ.
VARIANTS_128 = {
    "synthetic_128": ("synthetic", {
        "make_dataset.data_dir", "make_dataset.image_size",
        "generate_synthetic.image_size", "Unsup3D.image_size",
        # CPU budget: fewer, costlier images and steps.
        "generate_synthetic.num_train", "train.batch_size",
        "train.num_epochs", "train.checkpoint_every_steps",
        "train.summary_every_steps", "train.image_summary_every_steps",
        # A smaller step size: the 128 px networks stop reading their
        # code at synthetic.gin's 3e-4 (README, Resolution).
        "train.learning_rate",
        # The depth prior at second order and scaled with S, and the
        # pooled photometric terms: at 128 px total variation left ripples
        # or a flat depth, and the full-resolution L1 reaches a pixel or two.
        "Unsup3D.lam_depth_sm", "Unsup3D.depth_smoothness_order",
        "Unsup3D.lam_multiscale", "Unsup3D.multiscale_factors"}),
    **{name: (name[:-len("_128")], set(AT_128)) for name in PAPER_128},
}


def bindings(name):
  """{parameter: value text} of a bundled config, read as text (comments
  and blank lines dropped; every binding there fits on one line)."""
  with open(gin_configs.resolve(name)) as f:
    lines = [line.split("#")[0].strip() if not line.lstrip().startswith(
        "make_dataset.source") else line.strip() for line in f]
  return dict(line.split(" = ", 1) for line in lines if line)


@pytest.mark.parametrize("name", sorted(PAPER) + sorted(PAPER_128))
def test_paper_config_matches_design_table(name):
  table = {**PAPER, **PAPER_128}
  gin.clear_config()
  try:
    gin.parse_config_file(gin_configs.resolve(name))
    for parameter, expected in table[name].items():
      value = gin.query_parameter(parameter)
      value = tuple(value) if isinstance(value, list) else value
      assert value == expected, f"{name}.gin: {parameter}"
  finally:
    gin.clear_config()


@pytest.mark.parametrize("name", sorted(VARIANTS_128))
def test_each_128_config_is_its_64_config_at_128(name):
  base, changed = VARIANTS_128[name]
  ours, theirs = bindings(name), bindings(base)
  # Every binding of the 64 config; more only among the allowed changes.
  assert set(theirs) <= set(ours)
  assert set(ours) - set(theirs) - {"Unsup3D.vgg_layer"} <= changed
  for parameter in ours:
    if parameter in changed:
      assert ours[parameter] != theirs.get(parameter), parameter
    else:
      assert ours[parameter] == theirs[parameter], parameter
  for parameter in ("Unsup3D.image_size", "make_dataset.image_size",
                    "generate_synthetic.image_size"):
    if parameter in ours:
      assert ours[parameter] == "128", parameter
  if name == "synthetic_128":  # its own data, not the 64 px files
    assert ours["make_dataset.data_dir"] == "'data/synthetic_128'"


@pytest.mark.parametrize("name", gin_configs.available())
def test_every_config_feeds_the_model_images_of_its_size(name):
  gin.clear_config()
  try:
    gin.parse_config_file(gin_configs.resolve(name))
    size = gin.query_parameter("Unsup3D.image_size")
    assert gin.query_parameter("make_dataset.image_size") == size
    if name.startswith("synthetic"):
      assert gin.query_parameter("generate_synthetic.image_size") == size
    datasets.check_image_size(size)
    with pytest.raises(datasets.DataError,
                       match=r"make_dataset.image_size = \d+ but "
                       r"Unsup3D.image_size = 256"):
      datasets.check_image_size(256)
  finally:
    gin.clear_config()
  # Unbound, the pipeline's default side is 64, the model's default.
  datasets.check_image_size(64)
  with pytest.raises(datasets.DataError, match="Unsup3D.image_size = 128"):
    datasets.check_image_size(128)


def test_every_bundled_config_parses():
  assert (set(PAPER) | set(VARIANTS_128) | {"synthetic"} <=
          set(gin_configs.available()))
  for name in gin_configs.available():
    gin.clear_config()
    try:
      gin.parse_config_file(gin_configs.resolve(name))
    finally:
      gin.clear_config()


def test_names_resolve_to_bundled_configs_from_any_directory(tmp_path,
                                                             monkeypatch):
  monkeypatch.chdir(tmp_path)
  expected = os.path.join(gin_configs.DIRECTORY, "cars.gin")
  for name in ("cars", "cars.gin", "gin_configs/cars.gin"):
    assert gin_configs.resolve(name) == expected
  own = tmp_path / "cars.gin"  # a file of one's own wins over the bundled
  own.write_text("Unsup3D.nf = 8\n")
  assert gin_configs.resolve("cars.gin") == "cars.gin"
  with pytest.raises(FileNotFoundError) as error:
    gin_configs.resolve("carz.gin")
  for name in PAPER:
    assert name in str(error.value)
  with pytest.raises(FileNotFoundError):
    gin_configs.resolve("elsewhere/cars.gin")  # a path is taken as a path


def test_repository_link_points_at_the_bundled_configs():
  assert (os.path.realpath(os.path.join(ROOT, "gin_configs")) ==
          os.path.realpath(gin_configs.DIRECTORY))


def test_unknown_config_name_from_the_command_line_lists_the_configs(
    tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "tf_unsup3d.evaluate", "--gin_file=carz.gin",
       "--checkpoint=x"], cwd=tmp_path, capture_output=True, text=True,
      timeout=300)
  assert result.returncode != 0
  assert "carz.gin" in result.stderr and "celeba" in result.stderr


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                  "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
                 check=True, capture_output=True, timeout=600)
  wheel, = tmp_path.glob("tf_unsup3d-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  for name in gin_configs.available():
    assert f"tf_unsup3d/gin_configs/{name}.gin" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER) + sorted(PAPER_128))
def test_paper_config_without_data_or_weights_says_what_to_get(
    name, tmp_path, monkeypatch):
  """From an empty directory: first the VGG16 weights are missing, then
  (without the perceptual loss) the data; each message names the fix."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  for bindings, error, needles in [
      ([], FileNotFoundError, ["vgg16-397923af.pth", "Unsup3D.lam_perc = 0.0"]),
      (["Unsup3D.lam_perc = 0.0"], datasets.DataError,
       ["does not exist", "github.com/elliottwu/unsup3d"])]:
    gin.clear_config()
    try:
      gin.parse_config_files_and_bindings([gin_configs.resolve(name)],
                                          bindings)
      with pytest.raises(error) as caught:
        train.train(str(tmp_path / "run"), strategy)
    finally:
      gin.clear_config()
    for needle in needles:
      assert needle in str(caught.value), (name, str(caught.value))
  assert not os.path.exists(tmp_path / "data")  # nothing generated


@pytest.mark.slow
def test_train_command_stops_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "tf_unsup3d.train", "--gin_file=cars.gin",
       f"--model_dir={tmp_path / 'run'}", "--gin_param=Unsup3D.lam_perc = 0.0"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "train: Data directory data/syncar does not exist" in result.stderr
