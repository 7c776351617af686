r"""3D reconstructions of your own images, as pictures, turntables and meshes.

    python -m tf_unsup3d.demo --input=FILE_OR_DIR --output_dir=DIR \
        (--checkpoint=runs/synthetic [--gin_file=gin_configs/synthetic.gin]
         | --saved_model=exported/unsup3d/1) \
        [--detect_faces [--no_face=skip|centre]] [--boxes=FILE --box_rule=...]

Takes any JPEG, PNG (8 or 16 bit, grey, RGBA), GIF or BMP of any size,
centre-crops it to a square and resizes it to S x S, S the model's
`image_size` (64, 128 or 256: the checkpoint's gin config, or the
SavedModel's renderer config), as the SavedModel's `predict_images_bytes`
does (`tf_unsup3d.preprocessing`). With
`--detect_faces` or `--boxes` each photo is first cropped to its largest face
or its listed box (`tf_unsup3d.cropping`: the reference demo's square, edge
pixels repeated past the photo's border); photos without one are listed as
skipped, or centre-cropped with `--no_face=centre`. For each image,
`DIR/<name>/` gets:

  input.png              the S x S model input
  depth.png              canonical depth, colour-mapped (near = bright)
  depth16.png            canonical depth, 16-bit grey: g = (max_depth - d) /
                         (max_depth - min_depth) * 65535, the dataset's depth
                         PNG convention (near = bright; read it back with
                         `datasets.decode_depth`)
  albedo.png, normal.png, shading.png, canonical.png, reconstruction.png
  turntable.gif          the textured canonical mesh turning in yaw
  turntable_shape.gif    the same mesh shaded grey from its normals
  mesh.obj, mesh.mtl, mesh_albedo.png   textured mesh (albedo texture)
  mesh.glb               the same mesh as binary glTF

Meshes: one vertex per pixel of the lifted canonical depth (scene units,
x right, y up, z towards the viewer: the camera frame with y and z
negated, as OBJ / glTF viewers expect), two triangles per pixel quad, UVs
from pixel positions. `DIR/index.html` shows every image's results side
by side. Unreadable files are reported and skipped; every file is written
atomically.
"""

import html
import json
import os
import re
import sys
import urllib.parse

from absl import app
from absl import flags
from absl import logging
import numpy as np
import PIL.Image
import tensorflow as tf
import trimesh

from tf_unsup3d import atomic_files
from tf_unsup3d import checkpoints
from tf_unsup3d import configurable
from tf_unsup3d import cropping
from tf_unsup3d import preprocessing
from tf_unsup3d import visualization
from tf_unsup3d.data import datasets
from tf_unsup3d.data import depth_png
from tf_unsup3d.rendering import rasterizer
from tf_unsup3d.rendering import renderer as renderer_lib

# Light of the grey shape renders: from the upper left, towards the scene
# (DESIGN convention: normalise(dx, dy, 1), y down).
SHAPE_LIGHT = (-0.5, -0.5, 1.0)
PICTURES = ("input", "depth", "albedo", "normal", "shading", "canonical",
            "reconstruction")
TURNTABLES = ("turntable", "turntable_shape")


class Predictor:
  """`[N, S, S, 3]` images in [0, 1] -> model outputs, plus its renderer."""

  def __init__(self, predict, renderer):
    self._predict = predict
    self.renderer = renderer
    s = renderer.image_size
    self.render_yaw = tf.function(renderer.render_yaw, input_signature=[
        tf.TensorSpec([None, s, s, 3], tf.float32),
        tf.TensorSpec([None, s, s], tf.float32),
        tf.TensorSpec([None], tf.float32)])

  @classmethod
  def from_checkpoint(cls, checkpoint):
    model = checkpoints.load_model(checkpoint)
    s = model.image_size
    predict = tf.function(lambda x: model(x, training=False), input_signature=[
        tf.TensorSpec([None, s, s, 3], tf.float32)])
    return cls(predict, model.renderer)

  @classmethod
  def from_saved_model(cls, path):
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    config = json.loads(loaded.renderer_config_json().numpy())
    return cls(lambda x: signature(images=x), renderer_lib.Renderer(**config))

  def __call__(self, images):
    outputs = self._predict(tf.convert_to_tensor(images, tf.float32))
    return {k: np.asarray(v) for k, v in outputs.items()}


def list_inputs(path):
  """Image files under `path` (a file, or a folder searched recursively)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--input {path} is neither a file nor a folder.")
  files = []
  for root, _, names in os.walk(path):
    files += [os.path.join(root, n) for n in names
              if n.lower().endswith(datasets.IMAGE_EXTENSIONS)]
  return sorted(files)


def output_names(paths):
  """A distinct, filesystem-safe folder name per input path.

  Letters, digits, '_' and '-' only: no dot, so no name is the overview
  page's (`index.html.png` would otherwise take `index.html`), '.' or '..',
  or hidden. Distinct ignoring case, for case-insensitive file systems.
  """
  names, seen = [], set()
  for path in paths:
    stem = re.sub(r"[^A-Za-z0-9_-]", "_",
                  os.path.splitext(os.path.basename(path))[0]) or "image"
    name, i = stem, 2
    while name.lower() in seen:
      name, i = f"{stem}_{i}", i + 1
    seen.add(name.lower())
    names.append(name)
  return names


def shape_shading(normal):
  """Grey Lambertian shading `[N, S, S, 3]` of normals under `SHAPE_LIGHT`."""
  light = np.asarray(SHAPE_LIGHT, np.float32)
  light /= np.linalg.norm(light)
  cosine = np.clip(np.sum(normal * light, axis=-1, keepdims=True), 0.0, 1.0)
  return np.repeat(0.15 + 0.85 * cosine, 3, axis=-1).astype(np.float32)


def mesh_arrays(renderer, depth):
  """Vertices `[S*S, 3]` (y up, z to the viewer), faces, UVs of a depth map.

  Faces are counter-clockwise seen from the viewer (the glTF / OBJ front).
  """
  s = renderer.image_size
  points = renderer.depth_to_points(depth[None])[0].numpy().reshape(-1, 3)
  vertices = points * np.array([1.0, -1.0, -1.0], np.float32)
  faces = rasterizer.grid_faces(s, s).numpy()
  v, u = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1)
  uv = np.stack([u.ravel(), 1.0 - v.ravel()], axis=-1)
  return vertices, faces, uv


def obj_text(vertices, faces, uv, mtl_name, material="albedo"):
  """Wavefront OBJ: one UV per vertex, 1-based `f v/vt` faces."""
  lines = [f"mtllib {mtl_name}", f"usemtl {material}"]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
  lines += [f"vt {s:.6f} {t:.6f}" for s, t in uv]
  lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in faces + 1]
  return "\n".join(lines) + "\n"


def mtl_text(texture_name, material="albedo"):
  return (f"newmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
          f"map_Kd {texture_name}\n")


def glb_bytes(vertices, faces, uv, texture):
  """Binary glTF of the textured mesh (texture uint8 `[S, S, 3]`)."""
  visual = trimesh.visual.TextureVisuals(
      uv=uv, image=PIL.Image.fromarray(texture))
  mesh = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual,
                         process=False)
  return mesh.export(file_type="glb")


def _to_uint8(image):
  return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) *
                  255.0).astype(np.uint8)


def yaw_angles(num_frames, max_angle):
  """A looping sweep -max_angle .. max_angle and back, in radians."""
  t = np.arange(num_frames, dtype=np.float32) / num_frames
  return np.radians(max_angle * np.sin(2.0 * np.pi * t)).astype(np.float32)


def write_results(folder, image, outputs, predictor, num_frames, max_angle):
  """Every file of one image (module docstring) into `folder`."""
  r = predictor.renderer
  depth = outputs["canon_depth"]
  pictures = {
      "input": image[None],
      "depth": visualization.depth_to_rgb(depth, r.min_depth, r.max_depth),
      "albedo": outputs["canon_albedo"],
      "normal": visualization.normal_to_rgb(outputs["canon_normal"]),
      "shading": visualization.gray_to_rgb(outputs["canon_diffuse_shading"]),
      "canonical": outputs["canon_image"],
      "reconstruction": outputs["recon_image"],
  }
  for name, picture in pictures.items():
    visualization.write_png(os.path.join(folder, f"{name}.png"),
                            _to_uint8(np.asarray(picture)[0]))
  atomic_files.write_bytes(
      os.path.join(folder, "depth16.png"),
      tf.io.encode_png(depth_png.encode(depth[0], r.min_depth,
                                        r.max_depth)[..., None]).numpy())
  angles = yaw_angles(num_frames, max_angle)
  textures = {"turntable": outputs["canon_image"],
              "turntable_shape": shape_shading(outputs["canon_normal"])}
  for name, texture in textures.items():
    frames = predictor.render_yaw(texture, depth, angles).numpy()[0]
    atomic_files.write_bytes(os.path.join(folder, f"{name}.gif"),
                              visualization.encode_gif(frames, frame_ms=80))
  vertices, faces, uv = mesh_arrays(r, depth[0])
  albedo = _to_uint8(outputs["canon_albedo"][0])
  visualization.write_png(os.path.join(folder, "mesh_albedo.png"), albedo)
  atomic_files.write_bytes(os.path.join(folder, "mesh.mtl"),
                            mtl_text("mesh_albedo.png").encode())
  atomic_files.write_bytes(os.path.join(folder, "mesh.obj"),
                            obj_text(vertices, faces, uv, "mesh.mtl").encode())
  atomic_files.write_bytes(os.path.join(folder, "mesh.glb"),
                            glb_bytes(vertices, faces, uv, albedo))


def index_html(results, skipped, framed=None):
  """The overview page: one row per image, one column per result.

  Sized to fit a 1400 px wide window: the name, how the photo was framed
  (`framed`: {folder name: description}) and the file links share the
  first column, which wraps.
  """
  columns = PICTURES + TURNTABLES
  head = "".join(f"<th>{c}</th>" for c in ("image",) + columns)
  rows = []
  for name, source in results:
    q = urllib.parse.quote(name)
    links = " ".join(f'<a href="{q}/{f}">{f}</a>' for f in
                     ("mesh.obj", "mesh.glb", "depth16.png"))
    how = (framed or {}).get(name)
    first = (f"<b>{html.escape(os.path.basename(source))}</b>" +
             (f"<br><small>{html.escape(how)}</small>" if how else "") +
             f"<br><small>{links}</small>")
    cells = [f'<td class="name">{first}</td>']
    cells += [f'<td><img src="{q}/{c}.{"gif" if c in TURNTABLES else "png"}"'
              f' alt="{c}"></td>' for c in columns]
    rows.append("<tr>" + "".join(cells) + "</tr>")
  skipped_html = "".join(
      f"<li>{html.escape(path)}: {html.escape(reason)}</li>"
      for path, reason in skipped)
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>unsup3d demo</title>
<style>
body {{ font-family: sans-serif; background: #f4f4f4; margin: 8px; }}
table {{ border-collapse: collapse; }}
img {{ width: 112px; height: 112px; image-rendering: pixelated;
       display: block; }}
td, th {{ padding: 2px; text-align: center; }}
td.name {{ max-width: 150px; overflow-wrap: anywhere; text-align: left; }}
</style></head><body>
<h1>unsup3d: {len(results)} images</h1>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{"<h2>Skipped</h2><ul>" + skipped_html + "</ul>" if skipped else ""}
</body></html>
"""


def run_demo(predictor, paths, output_dir, num_frames=16, max_angle=60.0,
             max_pixels=preprocessing.DEFAULT_MAX_PIXELS, framing=None):
  """Writes every result and index.html; returns (done, skipped).

  `framing` (a `cropping.Framing`, optional) crops each photo to its face or
  box first; photos it finds no face or box in are skipped or centre-cropped
  as it says. done: [(folder name, path)]; skipped: [(path, reason)].
  """
  done, skipped, framed = [], [], {}
  size = predictor.renderer.image_size
  for name, path in zip(output_names(paths), paths):
    try:
      with open(path, "rb") as f:
        data = f.read()
      photo = preprocessing.decode_rgb(data, max_pixels).numpy()
      how = "centre crop"
      if framing is not None and framing.active:
        photo, how = framing(path, photo)
      image = preprocessing.center_crop_resize(photo, size).numpy()
    except (OSError, tf.errors.OpError, ValueError) as e:
      reason = preprocessing.error_reason(e)
      print(f"Skipping {path}: {reason}", file=sys.stderr)
      skipped.append((path, reason))
      continue
    outputs = predictor(image[None])
    write_results(os.path.join(output_dir, name), image, outputs, predictor,
                  num_frames, max_angle)
    done.append((name, path))
    framed[name] = how
    logging.info("%s (%s) -> %s", path, how, os.path.join(output_dir, name))
  atomic_files.write_bytes(os.path.join(output_dir, "index.html"),
                            index_html(done, skipped, framed).encode("utf-8"))
  return done, skipped


def define_flags():
  """Command-line flags of the demo."""
  configurable.gin_flags()
  flags.DEFINE_string("input", None, "An image file or a folder of images.")
  flags.DEFINE_string("output_dir", None, "Where to write the results.")
  checkpoints.define_checkpoint_flag()
  flags.DEFINE_string("saved_model", None, "An exported SavedModel version "
                      "folder (tf_unsup3d.export.export_savedmodel), instead.")
  flags.DEFINE_integer("num_frames", 16, "Frames per turntable.")
  flags.DEFINE_float("max_angle", 60.0, "Turntable yaw amplitude, degrees.")
  flags.DEFINE_integer("max_pixels", preprocessing.DEFAULT_MAX_PIXELS,
                       "Larger images are skipped.")
  cropping.define_flags()


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.input or not args.output_dir:
    raise app.UsageError("--input and --output_dir are required.")
  if bool(args.checkpoint) == bool(args.saved_model):
    raise app.UsageError("Give exactly one of --checkpoint, --saved_model.")
  try:  # before the model loads: a missing extra or box file stops at once
    framing = cropping.framing_from_flags()
  except (ImportError, OSError, cropping.BoxError) as e:
    raise app.UsageError(str(e)) from None
  if args.checkpoint:
    configurable.parse_gin_flags(skip_unknown=configurable.TRAINING_PIPELINE)
    predictor = Predictor.from_checkpoint(args.checkpoint)
  else:
    predictor = Predictor.from_saved_model(args.saved_model)
  paths = list_inputs(args.input)
  done, skipped = run_demo(predictor, paths, args.output_dir, args.num_frames,
                           args.max_angle, args.max_pixels, framing)
  # Each skipped file was named with its reason as it was skipped.
  print(f"{len(done)} images -> {args.output_dir}/index.html; "
        f"{len(skipped)} skipped" +
        (" (reasons above and on the page)" if skipped else ""))


if __name__ == "__main__":
  define_flags()
  app.run(main)
