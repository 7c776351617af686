"""The bundled gin configs, and how a `--gin_file` value finds one.

The configs ship inside the package (the repository's `gin_configs/` links
here), so `--gin_file=cars.gin` works from any directory and from an
installed package, while a path to a file of one's own keeps working.
"""

import os

DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def available():
  """Sorted names (without `.gin`) of the bundled configs."""
  return sorted(f[:-len(".gin")] for f in os.listdir(DIRECTORY)
                if f.endswith(".gin"))


def resolve(name):
  """The file a `--gin_file` value means.

  Args:
    name: a path to a gin file, or the name of a bundled config with or
      without `.gin` and with or without a leading `gin_configs/` (e.g.
      `cars`, `cars.gin`, `gin_configs/cars.gin`).

  Returns:
    `name` itself when it is an existing file, else the bundled config's
    absolute path.

  Raises:
    FileNotFoundError: neither; the message lists the bundled configs.
  """
  if os.path.isfile(name):
    return name
  head, base = os.path.split(os.path.normpath(name))
  stem = base[:-len(".gin")] if base.endswith(".gin") else base
  bundled = os.path.join(DIRECTORY, stem + ".gin")
  if head in ("", "gin_configs") and os.path.isfile(bundled):
    return bundled
  raise FileNotFoundError(
      f"gin config {name!r} not found: it is neither a file nor a bundled "
      f"config. Bundled configs: {', '.join(available())} (give e.g. "
      f"--gin_file={available()[0]}.gin), or a path to a .gin file.")
