"""The photo-geometric autoencoder of Wu et al. (CVPR 2020), DESIGN sections 1 and 3."""

import math

from tf_unsup3d.configurable import keras_configurable
import keras
import tensorflow as tf

from tf_unsup3d import losses
from tf_unsup3d import networks
from tf_unsup3d import shapes
from tf_unsup3d import value_ranges
from tf_unsup3d.rendering import renderer as renderer_lib
from tf_unsup3d.rendering import sampling
from tf_unsup3d.rendering import shading
from tf_unsup3d.rendering import transforms


def _flip(x):
  """Mirrors `[B, H, W, ...]` horizontally."""
  return tf.reverse(x, axis=[2])


def _mirror_average(x):
  """`[B, H, W, ...]` averaged with its mirror image."""
  return (x + _flip(x)) / 2.0


def _mirror_mean(x):
  """`_mirror_average` without gradient."""
  return tf.stop_gradient(_mirror_average(x))


def _rescale(x, low, high):
  """Maps x in [-1, 1] linearly onto [low, high]."""
  return low + value_ranges.to_unit(x) * (high - low)


# The canonical factors, `Unsup3D.canonical_factors`' outputs and the first
# of `Unsup3D.call`'s: name -> (shape, values), B images of S pixels.
FACTORS = {
    "canon_depth": ("[B, S, S]", "canonical (frontal) depth, scene units in "
                    "[min_depth, max_depth]; the two leftmost and rightmost "
                    "columns at border_depth"),
    "canon_albedo": ("[B, S, S, 3]", "canonical albedo in [0, 1]"),
    "canon_normal": ("[B, S, S, 3]", "unit normals of the canonical depth, "
                     "camera frame x right, y down, z away from the camera"),
    "canon_diffuse_shading": ("[B, S, S, 1]", "max(0, n . l) in [0, 1]"),
    "canon_image": ("[B, S, S, 3]", "albedo x (ambient + diffuse x shading), "
                    "about [0, 1] (shading above 1 can exceed it)"),
    "light": ("[B, 4]", "ambient, diffuse strength (in their ranges), light "
              "dx, dy in [-1, 1]"),
    "light_direction": ("[B, 3]", "unit vector normalise(dx, dy, 1)"),
    "view": ("[B, 6]", "rx, ry, rz (radians), tx, ty, tz (scene units)"),
}

# Every output of `Unsup3D.call`: name -> (shape, values).
OUTPUTS = {
    **FACTORS,
    "canon_depth_unbordered": ("[B, S, S]", "canon_depth before its border "
                               "columns are set (the smoothness loss's)"),
    "conf_sigma_l1": ("[B, S, S, 2]", "photometric confidence sigma > 0 "
                      "(original, mirrored); only with use_conf_map"),
    "conf_sigma_perc": ("[B, S/4, S/4, 2]", "perceptual confidence sigma > 0 "
                        "(original, mirrored); only with use_conf_map; "
                        "S/8 with vgg_layer='relu4_3'"),
    "recon_image": ("[B, S, S, 3]", "reconstruction in the input view, [0, 1]"
                    " (0.5 where recon_mask is 0)"),
    "recon_image_flip": ("[B, S, S, 3]", "the same from the mirrored "
                         "factors"),
    "recon_depth": ("[B, S, S]", "depth in the input view, background at "
                    "max_depth + (max_depth - min_depth) / 2"),
    "recon_depth_flip": ("[B, S, S]", "the same from the mirrored factors"),
    "recon_mask": ("[B, S, S]", "{0, 1}: 1 where both reconstructions are "
                   "valid (no gradient)"),
}


def _named_factors(canon_depth, canon_albedo, shaded, view):
  """The canonical factors under their output names (`FACTORS`).

  Args:
    canon_depth: `[B, S, S]` canonical depth in scene units.
    canon_albedo: `[B, S, S, 3]` albedo in [-1, 1] (network range).
    shaded: `Unsup3D.shade`'s dict for these B images.
    view: `[B, 6]` decoded view (`Unsup3D.decode_view`).
  """
  return {
      "canon_depth": canon_depth,
      "canon_albedo": value_ranges.to_unit(canon_albedo),
      "canon_normal": shaded["normal"],
      "canon_diffuse_shading": shaded["diffuse_shading"],
      "canon_image": value_ranges.to_unit(shaded["canon_image"]),
      "light": shaded["light"],
      "light_direction": shaded["light_direction"],
      "view": view,
  }


@keras_configurable
class Unsup3D(keras.Model):
  """Predicts depth, albedo, light and view from one image and renders them back.

  `model(images)` takes `[B, S, S, 3]` images in [0, 1] (float, or uint8 in
  [0, 255]) and returns a dict of tensors, the module's `OUTPUTS` (names,
  shapes and values); `canonical_factors(images)` returns `FACTORS`, the
  first of them, without rendering.

  Every hyper-parameter below is a gin-configurable constructor argument
  whose default is the paper's (CelebA setting, DESIGN section 6).
  """

  def __init__(self,
               image_size=64,
               fov=10.0,
               min_depth=0.9,
               max_depth=1.1,
               border_depth=None,
               rot_center_depth=None,
               xyz_rotation_range=60.0,
               xy_translation_range=0.1,
               z_translation_range=0.1,
               amb_light_range=(0.0, 1.0),
               diff_light_range=(0.0, 1.0),
               use_conf_map=True,
               lam_perc=1.0,
               lam_flip=0.5,
               lam_depth_sm=0.0,
               depth_smoothness_order=1,
               lam_depth_deviation=0.0,
               depth_deviation_relative=False,
               lam_multiscale=0.0,
               multiscale_factors=(2, 4, 8),
               lam_rerender_view=0.0,
               rerender_view_scale=0.5,
               rerender_view_equivariance=False,
               rerender_canonical_depth=False,
               flat_depth_init=False,
               symmetric_depth=False,
               nf=64,
               zdim=256,
               light_view_nf=32,
               conf_zdim=128,
               vgg_weights="imagenet",
               vgg_layer="relu3_3",
               candidate_chunk=1 << 17,
               name="unsup3d",
               **kwargs):
    """Args:
      image_size: S, side of the square input in pixels: 64 (the paper's
        networks), 128 or 256 (one more stride-2 stage per doubling).
      fov: camera field of view in degrees.
      min_depth, max_depth: canonical depth range in scene units.
      border_depth: depth of the two leftmost/rightmost columns; default
        0.7 max_depth + 0.3 min_depth.
      rot_center_depth: z of the view rotation centre; default mid depth.
      xyz_rotation_range: max |rotation| per axis in degrees.
      xy_translation_range, z_translation_range: max |translation|.
      amb_light_range, diff_light_range: (low, high) ambient and diffuse
        light strengths.
      use_conf_map: predict confidence maps (heteroscedastic losses).
      lam_perc, lam_flip, lam_depth_sm: loss weights. lam_perc = 0 removes
        the VGG16 perceptual loss and its weights.
      depth_smoothness_order: the depth prior on first differences (1,
        total variation, the reference's) or second differences (2); see
        `losses.depth_smoothness`.
      lam_depth_deviation: weight of the canonical depths' spread about
        their batch mean (0 in the paper; see `losses.depth_deviation`).
      depth_deviation_relative: measure that spread in units of the mean
        shape's relief, not of the depth range (`losses.depth_deviation`).
      lam_multiscale: weight of the photometric loss on average-pooled
        images (0 in the paper; see `losses.multiscale_photometric_loss_sums`).
      multiscale_factors: its pooling factors (divisors of image_size).
      lam_rerender_view: weight of the view consistency on re-rendered
        images (0 in the paper; see `rerender_view_loss_sums`).
      rerender_view_scale: the re-rendering views are uniform within this
        fraction, in (0, 1], of each view range (xyz_rotation_range, ...).
      rerender_view_equivariance: the term also renders each input image,
        on its reconstructed depth, turned by a random view within the same
        ranges, and asks the view network for the turn composed with its
        own prediction for the input (see `view_equivariance_loss_sums`).
      rerender_canonical_depth: the term also asks the depth network, on
        the same renderings, for the mirror-symmetric canonical depth they
        were rendered from (L1 per depth range, the term's weight; reported
        as `rerender_depth`): a turned face then has the frontal face's
        canonical depth, and its turn is left to the view.
      flat_depth_init: start the depth network's last convolution at zero,
        so that every canonical depth starts flat at mid depth (the paper:
        PyTorch's default init, whose random depths give normals that are
        mostly noise, about twice as steep at 128 px as at 64).
      symmetric_depth: average the depth network's output with its mirror
        image, so that every canonical depth is exactly mirror-symmetric
        (the paper: symmetric only through the flip loss, 'probably
        symmetric'): a turned face can then not be explained by a lopsided
        depth, only by the view (the albedo stays free).
      nf, zdim: width and bottleneck of the depth and albedo nets (64, 256).
      light_view_nf: width of the light and view encoders (32).
      conf_zdim: bottleneck of the confidence net (128, width nf).
      vgg_weights: VGG16 of the perceptual loss, from a local file (see
        `VGGFeatures`): 'imagenet' (Keras' cached file, else torchvision's),
        'torchvision' (the paper's network, `vgg16-397923af.pth`), 'keras',
        a path, or None (random, for tests).
      vgg_layer: its feature layer, 'relu3_3' (the paper's, S/4 features)
        or 'relu4_3' (S/8); conf_sigma_perc has the features' resolution.
      candidate_chunk: (triangle, pixel) pairs per step of the visibility
        pass (`rasterizer.visible_triangles`).
    """
    super().__init__(name=name, **kwargs)
    if image_size not in networks.IMAGE_SIZES:
      raise ValueError(f"image_size={image_size}: the networks take "
                       f"image_size in {networks.IMAGE_SIZES}.")
    perc_downsample = networks.vgg_downsample(vgg_layer)
    self.image_size = image_size
    self.min_depth = float(min_depth)
    self.max_depth = float(max_depth)
    self.border_depth = float(0.7 * max_depth + 0.3 * min_depth
                              if border_depth is None else border_depth)
    self.xyz_rotation_range = float(xyz_rotation_range)
    self.xy_translation_range = float(xy_translation_range)
    self.z_translation_range = float(z_translation_range)
    self.amb_light_range = tuple(float(v) for v in amb_light_range)
    self.diff_light_range = tuple(float(v) for v in diff_light_range)
    self.use_conf_map = bool(use_conf_map)
    self.lam_perc = float(lam_perc)
    self.lam_flip = float(lam_flip)
    self.lam_depth_sm = float(lam_depth_sm)
    if depth_smoothness_order not in losses.DEPTH_SMOOTHNESS_ORDERS:
      raise ValueError("depth_smoothness_order must be 1 (total variation) "
                       f"or 2 (second differences), got "
                       f"{depth_smoothness_order!r}.")
    self.depth_smoothness_order = int(depth_smoothness_order)
    self.lam_depth_deviation = float(lam_depth_deviation)
    self.depth_deviation_relative = bool(depth_deviation_relative)
    if self.lam_depth_deviation < 0:
      raise ValueError(f"lam_depth_deviation must be >= 0, got "
                       f"{lam_depth_deviation}.")
    self.lam_multiscale = float(lam_multiscale)
    self.multiscale_factors = tuple(int(k) for k in multiscale_factors)
    for k in self.multiscale_factors:
      if k < 2 or image_size % k:
        raise ValueError(f"multiscale_factors must divide image_size "
                         f"{image_size} and be >= 2, got {k}.")
    self.lam_rerender_view = float(lam_rerender_view)
    self.rerender_view_scale = float(rerender_view_scale)
    self.rerender_view_equivariance = bool(rerender_view_equivariance)
    self.rerender_canonical_depth = bool(rerender_canonical_depth)
    self.symmetric_depth = bool(symmetric_depth)
    if not 0.0 < self.rerender_view_scale <= 1.0:
      raise ValueError(f"rerender_view_scale must be in (0, 1], got "
                       f"{rerender_view_scale}.")
    self.renderer = renderer_lib.Renderer(
        image_size=image_size, fov=fov, min_depth=min_depth,
        max_depth=max_depth, rot_center_depth=rot_center_depth,
        candidate_chunk=candidate_chunk)
    s = image_size
    self.net_depth = networks.EDDeconv(1, zdim=zdim, nf=nf, activation=None,
                                       image_size=s,
                                       zero_init_output=bool(flat_depth_init),
                                       name="net_depth")
    self.net_albedo = networks.EDDeconv(3, zdim=zdim, nf=nf,
                                        activation="tanh", image_size=s,
                                        name="net_albedo")
    self.net_light = networks.Encoder(4, nf=light_view_nf, image_size=s,
                                      name="net_light")
    self.net_view = networks.Encoder(6, nf=light_view_nf, image_size=s,
                                     name="net_view")
    self.net_conf = (networks.ConfNet(2, zdim=conf_zdim, nf=nf, image_size=s,
                                      perc_downsample=perc_downsample,
                                      name="net_conf")
                     if self.use_conf_map else None)
    self.vgg = (networks.VGGFeatures(weights=vgg_weights, layer=vgg_layer)
                if self.lam_perc > 0 else None)

  def build(self, input_shape):
    del input_shape  # Checked in call, with a clearer message than build's.
    input_shape = (None, self.image_size, self.image_size, 3)
    for net in (self.net_depth, self.net_albedo, self.net_light, self.net_view,
                self.net_conf):
      if net is not None:
        net.build(input_shape)

  def _check_images(self, images):
    images = tf.convert_to_tensor(images)
    s = self.image_size
    shapes.check_shape(images, "images", ("B", s, s, 3), "RGB")
    if images.dtype == tf.uint8:
      return tf.cast(images, tf.float32) / 255.0
    if not images.dtype.is_floating:
      raise ValueError(f"images must be float in [0, 1] or uint8, got "
                       f"{images.dtype}.")
    return tf.cast(images, tf.float32)

  def _canonical_depth(self, raw):
    """Raw netD output `[B, S, S]` -> canonical depth without, and with, the
    two leftmost and rightmost columns fixed at border_depth (mirror-
    symmetric with symmetric_depth)."""
    if self.symmetric_depth:
      raw = _mirror_average(raw)
    depth = raw - tf.reduce_mean(raw, axis=[1, 2], keepdims=True)
    depth = _rescale(tf.tanh(depth), self.min_depth, self.max_depth)
    s = self.image_size
    border = tf.constant([1.0] * 2 + [0.0] * (s - 4) + [1.0] * 2)
    return depth, depth * (1.0 - border) + border * self.border_depth

  def _predict(self, images, training, confidence):
    """The networks' predictions for `images`, in float32.

    Args:
      images: `[B, S, S, 3]` in [0, 1] (float, or uint8 in [0, 255]).
      training: passed to the networks.
      confidence: also run the confidence network, if the model has one.

    Returns:
      (factors, outputs). factors: the `reconstruct` arguments `canon_depth`
      `[B, S, S]` in scene units, and in network range [-1, 1] albedo
      `[B, S, S, 3]`, light `[B, 4]` and view `[B, 6]`. outputs: the
      `OUTPUTS` of `call` that come from the networks alone,
      `canon_depth_unbordered` and, with `confidence`, `conf_sigma_l1` and
      `conf_sigma_perc`.
    """
    x = value_ranges.to_signed(self._check_images(images))
    # Networks may compute in a mixed-precision policy; geometry is float32.
    run = lambda net: tf.nest.map_structure(
        lambda t: tf.cast(t, tf.float32), net(x, training=training))
    unbordered, depth = self._canonical_depth(run(self.net_depth)[..., 0])
    factors = (depth, run(self.net_albedo), run(self.net_light),
               run(self.net_view))
    outputs = {"canon_depth_unbordered": unbordered}
    if confidence and self.use_conf_map:
      outputs["conf_sigma_l1"], outputs["conf_sigma_perc"] = run(
          self.net_conf)
    return factors, outputs

  def call(self, images, training=False):
    with tf.name_scope("unsup3d"):
      factors, predicted = self._predict(images, training, confidence=True)
      outputs = self.reconstruct(*factors)
      outputs.update(predicted)
      return outputs

  def shade(self, canon_depth, canon_albedo, light):
    """Lambertian shading of canonical factors (no weights, no rendering).

    Args:
      canon_depth: `[B, S, S]` canonical depth in scene units.
      canon_albedo: `[B, S, S, 3]` albedo in [-1, 1] (network range).
      light: `[B, 4]` light encoder output in [-1, 1].

    Returns:
      Dict: `normal` `[B, S, S, 3]`, `diffuse_shading` `[B, S, S, 1]`,
      `canon_image` `[B, S, S, 3]` in about [-1, 1], `light` `[B, 4]`
      (ambient and diffuse in their ranges, dx, dy) and `light_direction`.
    """
    with tf.name_scope("shade"):
      ambient = _rescale(light[:, 0], *self.amb_light_range)
      diffuse = _rescale(light[:, 1], *self.diff_light_range)
      light_dir = shading.light_direction(light[:, 2:])
      shaded = self._shade_decoded(canon_depth, canon_albedo, ambient,
                                   diffuse, light_dir)
      shaded["light"] = tf.concat(
          [tf.stack([ambient, diffuse], -1), light[:, 2:]], axis=-1)
      shaded["light_direction"] = light_dir
      return shaded

  def _shade_decoded(self, canon_depth, canon_albedo, ambient, diffuse,
                     light_dir):
    """`shade` with the light decoded: ambient and diffuse `[B]` strengths,
    `[B, 3]` unit direction. Returns `normal`, `diffuse_shading` and
    `canon_image` (about [-1, 1])."""
    normal = self.renderer.normals_from_depth(canon_depth)
    diffuse_shading = shading.diffuse_shading(
        normal, light_dir, self.renderer.view_directions(canon_depth))
    shading_map = (ambient[:, None, None, None] +
                   diffuse[:, None, None, None] * diffuse_shading)
    return {
        "normal": normal,
        "diffuse_shading": diffuse_shading,
        "canon_image": value_ranges.to_signed(
            value_ranges.to_unit(canon_albedo) * shading_map),
    }

  def decode_view(self, view):
    """`[B, 6]` view encoder output in [-1, 1] -> radians and scene units."""
    return tf.concat([
        view[:, :3] * (math.pi / 180.0 * self.xyz_rotation_range),
        view[:, 3:5] * self.xy_translation_range,
        view[:, 5:] * self.z_translation_range], axis=-1)

  def canonical_factors(self, images, training=False):
    """The inference half: images -> canonical factors, no rasterisation.

    Args:
      images: `[B, S, S, 3]` in [0, 1] (float, or uint8 in [0, 255]).

    Returns:
      Dict of the `FACTORS`, as `call` returns them.
    """
    with tf.name_scope("canonical_factors"):
      (depth, albedo, light, view), _ = self._predict(images, training,
                                                      confidence=False)
      return _named_factors(depth, albedo, self.shade(depth, albedo, light),
                            self.decode_view(view))

  def reconstruct(self, canon_depth, canon_albedo, light, view):
    """Renders predicted factors into the input view (no weights involved).

    Args:
      canon_depth: `[B, S, S]` canonical depth in scene units.
      canon_albedo: `[B, S, S, 3]` albedo in [-1, 1] (network range).
      light: `[B, 4]` light encoder output in [-1, 1].
      view: `[B, 6]` view encoder output in [-1, 1].

    Returns:
      The output dict of `call` without the confidence maps.
    """
    with tf.name_scope("reconstruct"):
      batch = tf.shape(canon_depth)[0]
      # The mirrored branch shares light and view (DESIGN section 3, step 3).
      depth2 = tf.concat([canon_depth, _flip(canon_depth)], axis=0)
      albedo2 = tf.concat([canon_albedo, _flip(canon_albedo)], axis=0)
      shaded = self.shade(depth2, albedo2, tf.tile(light, [2, 1]))
      canon_image = shaded["canon_image"]
      view2 = self.decode_view(tf.tile(view, [2, 1]))
      recon_depth = self.renderer.warp_canon_depth(depth2, view2)
      grid = self.renderer.inverse_warp_grid(recon_depth, view2)
      recon_image = sampling.bilinear_sample(canon_image, grid)
      valid = self.renderer.coverage_mask(recon_depth)
      recon_mask = tf.stop_gradient(valid[:batch] * valid[batch:])
      recon_image = recon_image * tf.tile(recon_mask, [2, 1, 1])[..., None]

      outputs = _named_factors(
          canon_depth, canon_albedo,
          {k: v[:batch] for k, v in shaded.items()}, view2[:batch])
      outputs.update({
          "recon_image": value_ranges.to_unit(recon_image[:batch]),
          "recon_image_flip": value_ranges.to_unit(recon_image[batch:]),
          "recon_depth": recon_depth[:batch],
          "recon_depth_flip": recon_depth[batch:],
          "recon_mask": recon_mask,
      })
      return outputs

  def compute_losses(self, images, outputs, lam_flip=None,
                     reduce_denominator=None, lam_depth_sm=None,
                     lam_rerender_view=None, lam_depth_deviation=None):
    """The paper's training objective (DESIGN section 1).

    Args:
      images: the `[B, S, S, 3]` inputs given to the model, in [0, 1].
      outputs: the dict returned by `model(images)`.
      lam_flip: overrides the model's lam_flip (e.g. before the flip loss
        is switched on).
      lam_depth_sm: overrides the model's lam_depth_sm (a schedule); the
        term is computed only when the model's weight is > 0.
      lam_rerender_view, lam_depth_deviation: likewise for those weights.
      reduce_denominator: optional function applied to each loss's
        denominator (mask sum or count). Under a distribution strategy,
        summing it across replicas makes each replica's loss its share of
        the global-batch loss, so summed gradients equal one device's.

    Returns:
      Dict of scalars: `total`, `photometric`, `photometric_flip` and, when
      enabled, `perceptual`, `perceptual_flip`, `multiscale`,
      `multiscale_flip`, `rerender_view`, `rerender_depth`, `depth_smoothness`,
      `depth_deviation`. The photometric terms compare images in [-1, 1]
      like the paper.
    """
    with tf.name_scope("compute_losses"):
      lam_flip = self.lam_flip if lam_flip is None else lam_flip
      reduce_denominator = reduce_denominator or (lambda d: d)
      ratio = lambda sums: sums[0] / reduce_denominator(sums[1])
      x = value_ranges.to_signed(self._check_images(images))
      recon = value_ranges.to_signed(outputs["recon_image"])
      recon_flip = value_ranges.to_signed(outputs["recon_image_flip"])
      mask = outputs["recon_mask"]
      sigma = outputs.get("conf_sigma_l1")
      sigma_perc = outputs.get("conf_sigma_perc")
      pick = lambda s, i: None if s is None else s[..., i:i + 1]
      terms = {
          "photometric": ratio(losses.photometric_loss_sums(
              recon, x, mask, pick(sigma, 0))),
          "photometric_flip": ratio(losses.photometric_loss_sums(
              recon_flip, x, mask, pick(sigma, 1))),
      }
      total = terms["photometric"] + lam_flip * terms["photometric_flip"]
      if self.vgg is not None:
        batch = tf.shape(x)[0]
        features = tf.cast(self.vgg(tf.concat([recon, recon_flip, x], axis=0)),
                           tf.float32)
        f_recon, f_flip, f_x = (features[:batch], features[batch:2 * batch],
                                features[2 * batch:])
        terms["perceptual"] = ratio(losses.perceptual_loss_sums(
            f_recon, f_x, mask, pick(sigma_perc, 0)))
        terms["perceptual_flip"] = ratio(losses.perceptual_loss_sums(
            f_flip, f_x, mask, pick(sigma_perc, 1)))
        total += self.lam_perc * (terms["perceptual"] +
                                  lam_flip * terms["perceptual_flip"])
      if self.lam_multiscale > 0:
        terms["multiscale"] = ratio(losses.multiscale_photometric_loss_sums(
            recon, x, mask, self.multiscale_factors))
        terms["multiscale_flip"] = ratio(
            losses.multiscale_photometric_loss_sums(
                recon_flip, x, mask, self.multiscale_factors))
        total += self.lam_multiscale * (terms["multiscale"] +
                                        lam_flip * terms["multiscale_flip"])
      if self.lam_rerender_view > 0:
        lam_rerender_view = (self.lam_rerender_view if lam_rerender_view is None
                             else lam_rerender_view)
        rendered, target, active = self._symmetric_rerendering(outputs)
        sums = self._rerendered_view_error_sums(rendered, target, active)
        if self.rerender_view_equivariance:
          extra = self.view_equivariance_loss_sums(images, outputs)
          sums = (sums[0] + extra[0], sums[1] + extra[1])
        terms["rerender_view"] = ratio(sums)
        total += lam_rerender_view * terms["rerender_view"]
        if self.rerender_canonical_depth:
          terms["rerender_depth"] = ratio(self._rerender_depth_loss_sums(
              rendered, _mirror_mean(outputs["canon_depth_unbordered"])))
          total += lam_rerender_view * terms["rerender_depth"]
      if self.lam_depth_sm > 0:
        lam_depth_sm = (self.lam_depth_sm if lam_depth_sm is None
                        else lam_depth_sm)
        # Before the border is fixed, like the reference.
        terms["depth_smoothness"] = ratio(losses.depth_smoothness_sums(
            outputs["canon_depth_unbordered"], self.min_depth,
            self.max_depth, self.depth_smoothness_order))
        total += lam_depth_sm * terms["depth_smoothness"]
      if self.lam_depth_deviation > 0:
        terms["depth_deviation"] = ratio(losses.depth_deviation_sums(
            outputs["canon_depth_unbordered"], self.min_depth,
            self.max_depth, self.depth_deviation_relative))
        total += (self.lam_depth_deviation if lam_depth_deviation is None
                  else lam_depth_deviation) * terms["depth_deviation"]
      terms["total"] = total
      return terms

  def rerender_view_loss_sums(self, outputs, target=None):
    """View consistency on renderings of the model's own symmetric factors.

    Each image's predicted canonical depth and albedo (no gradient) are
    made mirror-symmetric (averaged with their mirror images), shaded under
    its predicted light and rendered at a random view, uniform within
    `rerender_view_scale` of each view range; the view network must predict
    that view: L1 in the encoder's [-1, 1] units, on the components whose
    range is not 0. It trains the view network only.

    The photometric loss tells the view where to move only within a pixel
    or two of alignment, and not at all once the canonical albedo has
    copied a turned input; this regression covers the whole view range.
    The symmetrised object is what makes the
    target right: whatever pose the predicted factors carry, the view of a
    symmetric object is the turn of its symmetry plane, which is the
    canonical frame's definition. Pixels no surface covers show the
    canonical image at the same pixel, like a background fixed in the
    camera: a black strip on one side would tell the yaw by itself.

    Args:
      outputs: the dict of `call` (`canon_depth`, `canon_albedo`, `light`,
        `light_direction`).
      target: optional `[B, 6]` views in encoder units [-1, 1] to render at
        instead of random ones (tests).

    Returns:
      (sum of absolute errors, number of terms): scalars.
    """
    rendered, target, active = self._symmetric_rerendering(outputs, target)
    return self._rerendered_view_error_sums(rendered, target, active)

  def read_rerendered_views(self, outputs, target):
    """The view network's reading of the mirror-symmetrised factors of
    `outputs` rendered at `target`, as in `rerender_view_loss_sums`: how
    well it reads turns on renderings, apart from photos.

    Args:
      outputs: the dict of `call` (`canon_depth`, `canon_albedo`, `light`,
        `light_direction`).
      target: `[B, 6]` views in encoder units [-1, 1].

    Returns:
      (read `[B, 6]`, target `[B, 6]` with inactive components zeroed), in
      encoder units.
    """
    rendered, target, _ = self._symmetric_rerendering(outputs, target)
    return tf.cast(self.net_view(rendered, training=False), tf.float32), target

  def _symmetric_rerendering(self, outputs, target=None):
    """The mirror-symmetrised factors of `outputs` rendered at `target` (or
    random) views: (rendered `[B, S, S, 3]` in [-1, 1], no gradient; the
    `[B, 6]` views in encoder units, inactive components zeroed; the `[6]`
    active-component mask)."""
    with tf.name_scope("symmetric_rerendering"):
      depth = _mirror_mean(outputs["canon_depth"])
      albedo = _mirror_mean(value_ranges.to_signed(outputs["canon_albedo"]))
      light = tf.stop_gradient(outputs["light"])
      image = self._shade_decoded(
          depth, albedo, light[:, 0], light[:, 1],
          tf.stop_gradient(outputs["light_direction"]))["canon_image"]
      active = self._active_view_components()
      if target is None:
        target = self._random_views(tf.shape(depth)[0])
      target = tf.convert_to_tensor(target, tf.float32) * active
      rendered = tf.stop_gradient(self.rerender(image, depth, target))
      return rendered, target, active

  def _rerendered_view_error_sums(self, rendered, target, active):
    """L1 of the view network's reading of `rendered` against `target`, on
    the active components: (sum, number of terms)."""
    with tf.name_scope("rerender_view_loss"):
      predicted = tf.cast(self.net_view(rendered, training=True), tf.float32)
      error = tf.abs(predicted - target) * active
      batch = tf.cast(tf.shape(rendered)[0], tf.float32)
      return tf.reduce_sum(error), batch * tf.reduce_sum(active)

  def _rerender_depth_loss_sums(self, rendered, depth):
    """L1 / depth range of the canonical depth predicted for `rendered`
    against the `[B, S, S]` canonical depth it was rendered from."""
    with tf.name_scope("rerender_depth_loss"):
      raw = tf.cast(self.net_depth(rendered, training=True), tf.float32)
      predicted, _ = self._canonical_depth(raw[..., 0])
      error = tf.abs(predicted - depth) / (self.max_depth - self.min_depth)
      return tf.reduce_sum(error), tf.cast(tf.size(error), tf.float32)

  def _active_view_components(self):
    """`[6]` 1 for view components whose range is not 0, else 0."""
    ranges = tf.constant([self.xyz_rotation_range] * 3 +
                         [self.xy_translation_range] * 2 +
                         [self.z_translation_range])
    return tf.cast(ranges > 0, tf.float32)

  def _random_views(self, batch):
    """`[batch, 6]` encoder-unit views uniform within rerender_view_scale."""
    return tf.random.uniform([batch, 6], -self.rerender_view_scale,
                             self.rerender_view_scale)

  def view_equivariance_loss_sums(self, images, outputs, turn=None):
    """Relative view consistency on the inputs re-rendered at a turn.

    Each input image, as a texture on its reconstructed depth (no
    gradient), is turned by a random view T (uniform within
    `rerender_view_scale` of each range) over itself as a fixed backdrop;
    the view network must predict T composed with its own prediction V
    for the input (`transforms.compose_views(T, V)`, V without gradient):
    L1 in encoder units, clipped to [-1, 1], on the active components. It
    asks for the view's scale rather than its zero: a prediction shrunk
    towards frontal by a factor k reads a turn T as k T. It trains the view
    network only.

    Args:
      images: `[B, S, S, 3]` the inputs, in [0, 1].
      outputs: the dict of `call` (`recon_depth`, `view`).
      turn: optional `[B, 6]` turns in encoder units [-1, 1] (tests).

    Returns:
      (sum of absolute errors, number of terms): scalars.
    """
    with tf.name_scope("view_equivariance_loss"):
      x = tf.stop_gradient(value_ranges.to_signed(self._check_images(images)))
      depth = tf.stop_gradient(outputs["recon_depth"])
      batch = tf.shape(depth)[0]
      active = self._active_view_components()
      if turn is None:
        turn = self._random_views(batch)
      turn = tf.convert_to_tensor(turn, tf.float32) * active
      composed = transforms.compose_views(
          self.decode_view(turn), tf.stop_gradient(outputs["view"]))
      unit = self.decode_view(tf.ones([1, 6]))
      target = tf.clip_by_value(
          tf.math.divide_no_nan(composed, unit), -1.0, 1.0) * active
      rendered = tf.stop_gradient(self.rerender(x, depth, turn))
      predicted = tf.cast(self.net_view(rendered, training=True), tf.float32)
      error = tf.abs(predicted - target) * active
      return (tf.reduce_sum(error),
              tf.cast(batch, tf.float32) * tf.reduce_sum(active))

  def rerender(self, canon_image, canon_depth, view):
    """A canonical image seen from `view`, over itself as a fixed backdrop.

    No gradient reaches `canon_depth` or `view` (the depth is rasterised
    without barycentrics); the texture's does.

    Args:
      canon_image: `[B, S, S, C]` canonical image (any range).
      canon_depth: `[B, S, S]` canonical depth in scene units.
      view: `[B, 6]` view encoder output in [-1, 1].

    Returns:
      `[B, S, S, C]`: the textured depth mesh warped into the view where
      it covers a pixel, the canonical image at the same pixel elsewhere.
    """
    with tf.name_scope("rerender"):
      rendered, _, covered = self.renderer.render_view(
          canon_image, canon_depth, self.decode_view(view),
          differentiable=False)
      return rendered + (1.0 - covered[..., None]) * canon_image
