"""Differentiable rendering on TensorFlow Graphics with a pure-TF visibility pass."""

from tf_unsup3d.rendering.renderer import Renderer
from tf_unsup3d.rendering.sampling import bilinear_sample

__all__ = ["Renderer", "bilinear_sample"]
