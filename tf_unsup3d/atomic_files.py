"""Atomic file writes: a reader sees the old file or the new one, never half."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def replacing(path, suffix=".tmp"):
  """Yields a private temporary path that replaces `path` on success.

  For writers that take a file name rather than bytes (Keras'
  `save_weights`, `tf.io.TFRecordWriter`). The temporary file sits in the
  same folder under a unique name ending in `suffix` (`save_weights` wants
  '.weights.h5'), so concurrent writers of one path (the workers of one run)
  do not collide and the rename is atomic. If the block raises, the
  temporary file is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_bytes(path, data):
  """Writes `data` (bytes) to `path` through a private temporary file."""
  with replacing(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
