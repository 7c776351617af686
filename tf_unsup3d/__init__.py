"""tf_unsup3d: unsupervised learning of probably symmetric deformable 3D objects.

TensorFlow/Keras implementation of Wu, Rupprecht & Vedaldi (CVPR 2020).
"""

import os

# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs it
# knows (AVX-512 Intel ones); elsewhere convolutions take Eigen's kernels,
# measured 2.5x slower on a 2-core AVX2 CPU (README, Speed). Must be set
# before TensorFlow loads; an explicit TF_ENABLE_ONEDNN_OPTS=0 is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tf_unsup3d.model import Unsup3D
from tf_unsup3d.rendering import bilinear_sample
from tf_unsup3d.rendering import Renderer

__all__ = ["Unsup3D", "Renderer", "bilinear_sample"]
