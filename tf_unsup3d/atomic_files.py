"""Atomic file writes: a reader sees the old file or the new one, never half."""

import os
import tempfile


def write_bytes(path, data):
  """Writes `data` (bytes) to `path` through a private temporary file.

  The temporary name is unique, so concurrent writers of the same path (the
  workers of one run) do not collide; the rename is atomic. On failure the
  temporary file is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
