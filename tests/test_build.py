"""BUILD describes the real module graph (Bazel itself cannot be fetched here).

Starlark is a Python subset, so BUILD is executed with stand-ins for the
rules; the targets it declares are checked against the files on disk and
against the imports each source file actually makes.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("tf_unsup3d", "tests", "benchmarks")


def _load_targets():
  targets = {}

  def rule(kind):
    def record(name, srcs=(), deps=(), **kwargs):
      assert name not in targets, f"BUILD declares target {name!r} twice"
      targets[name] = {"kind": kind, "srcs": list(srcs), "deps": list(deps),
                       **kwargs}
    return record

  namespace = {
      "load": lambda *args, **kwargs: None,
      "package": lambda **kwargs: None,
      "requirement": lambda name: "@pip//" + name,
      "glob": lambda patterns: sorted(
          p.relative_to(ROOT).as_posix() for pattern in patterns
          for p in ROOT.glob(pattern)),
      "py_library": rule("py_library"),
      "py_binary": rule("py_binary"),
      "py_test": rule("py_test"),
  }
  exec(compile((ROOT / "BUILD").read_text(), "BUILD", "exec"), namespace)  # pylint: disable=exec-used
  return targets


def _python_files():
  files = []
  for package in PACKAGES:
    files += [p.relative_to(ROOT).as_posix()
              for p in (ROOT / package).rglob("*.py")]
  return sorted(files)


def _module_name(path):
  module = path[:-3].replace("/", ".")
  return module[:-len(".__init__")] if module.endswith(".__init__") else module


def _project_imports(path, modules):
  """Project modules imported by the file at `path` (relative to ROOT).

  `from pkg import name` counts as importing pkg.name when that is a module
  in `modules`, and as importing pkg otherwise.
  """
  tree = ast.parse((ROOT / path).read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        names.add(full if full in modules else node.module)
  return {n for n in names if n.split(".")[0] in PACKAGES}


def test_every_python_file_is_in_exactly_one_target():
  owners = {}
  for name, target in _load_targets().items():
    for src in target["srcs"]:
      owners.setdefault(src, []).append(name)
  for path in _python_files():
    assert len(owners.get(path, [])) == 1, (
        f"{path} must be in the srcs of exactly one BUILD target, found "
        f"{owners.get(path, [])}")
  missing = sorted(set(owners) - set(_python_files()))
  assert not missing, f"BUILD lists files that do not exist: {missing}"


def test_dependencies_name_existing_targets():
  targets = _load_targets()
  for name, target in targets.items():
    for dep in target["deps"]:
      if dep.startswith("@"):
        continue
      label = dep.split(":")[-1]
      assert dep.startswith((":", "//:")) and label in targets, (
          f"target {name!r} depends on {dep!r}, which BUILD does not declare")


def test_every_test_file_has_a_py_test():
  targets = _load_targets()
  for path in _python_files():
    if path.startswith("tests/test_"):
      kinds = [t["kind"] for t in targets.values() if path in t["srcs"]]
      assert kinds == ["py_test"], f"{path} needs its own py_test target"


def test_deps_cover_the_imports_each_file_makes():
  targets = _load_targets()
  module_owner = {}
  for name, target in targets.items():
    for src in target["srcs"]:
      module_owner[_module_name(src)] = name
  for name, target in targets.items():
    direct = {d.split(":")[-1] for d in target["deps"] if not d.startswith("@")}
    for src in target["srcs"]:
      for module in _project_imports(src, module_owner):
        owner = module_owner.get(module)
        assert owner is not None, f"{src} imports {module}, not in BUILD"
        assert owner == name or owner in direct, (
            f"{src} imports {module} (target {owner!r}) but target "
            f"{name!r} does not depend on it")


# Import name -> PyPI name, for third-party packages a target may use.
_THIRD_PARTY = {
    "absl": "absl-py",
    "grpc": "grpcio",
    "gin": "gin-config",
    "h5py": "h5py",
    "keras": "keras",
    "keras_cv": "keras-cv",
    "numpy": "numpy",
    "PIL": "pillow",
    "pytest": "pytest",
    "tensorboard": "tensorboard",
    "tensorflow": "tensorflow",
    "tensorflow_graphics": "tensorflow-graphics",
    "tensorflow_serving": "tensorflow-serving-api",
    "torch": "torch",
    "trimesh": "trimesh",
    "ai_edge_litert": "ai-edge-litert",
}


def _third_party_imports(path):
  tree = ast.parse((ROOT / path).read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module.split(".")[0])
  return names & set(_THIRD_PARTY)


def test_third_party_imports_have_requirement_deps():
  for name, target in _load_targets().items():
    declared = {d[len("@pip//"):] for d in target["deps"]
                if d.startswith("@pip//")}
    for src in target["srcs"]:
      for module in _third_party_imports(src):
        assert _THIRD_PARTY[module] in declared, (
            f"{src} imports {module}; target {name!r} needs "
            f"requirement(\"{_THIRD_PARTY[module]}\") in its deps")


def test_requirements_are_pinned_in_the_lock_file():
  lock = (ROOT / "requirements_lock.txt").read_text().lower()
  pinned = {line.split("==")[0].strip().replace("_", "-")
            for line in lock.splitlines() if "==" in line}
  for name, target in _load_targets().items():
    for dep in target["deps"]:
      if dep.startswith("@pip//"):
        package = dep[len("@pip//"):]
        assert package in pinned, (
            f"target {name!r} needs {package}, which requirements_lock.txt "
            "does not pin")


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
