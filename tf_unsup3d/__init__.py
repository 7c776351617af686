"""tf_unsup3d: unsupervised learning of probably symmetric deformable 3D objects."""
