"""tf_unsup3d: unsupervised learning of probably symmetric deformable 3D objects.

TensorFlow/Keras implementation of Wu, Rupprecht & Vedaldi (CVPR 2020).
"""

from tf_unsup3d.model import Unsup3D
from tf_unsup3d.rendering import bilinear_sample
from tf_unsup3d.rendering import Renderer

__all__ = ["Unsup3D", "Renderer", "bilinear_sample"]
