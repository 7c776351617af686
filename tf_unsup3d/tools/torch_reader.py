"""Reads `torch.save` files without PyTorch and without running their code.

Both formats of `torch.save` are parsed: the zip archive of PyTorch >= 1.6
and the legacy stream of older versions (the reference implementation's
PyTorch 1.2, and torchvision's model zoo files). A restricted unpickler
rebuilds tensors as NumPy arrays, OrderedDicts and plain containers only.

A file is untrusted input, and a few hundred bytes can claim terabytes: the
sizes a file states (storage element counts, tensor sizes and strides, zip
members' uncompressed sizes) are checked against the bytes actually there
and against limits before anything is allocated, and zip members are never
decompressed past what is needed (`load_torch_file`).
"""

import collections
import io
import math
import os
import pickle
import re
import zipfile

import numpy as np

# Default limits: far above any file this project reads (torchvision's VGG16
# holds 528 MB, its largest tensor 103M elements; a paper-size reference
# checkpoint ~200 MB), far below what would exhaust a training machine.
DEFAULT_MAX_TENSOR_ELEMENTS = 2**28
DEFAULT_MAX_TOTAL_BYTES = 2**31

# The zip format's fixed-size records (data.pkl aside) are tiny.
_MAX_SMALL_RECORD_BYTES = 1024


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the configured model."""


class CheckpointLimitError(CheckpointError):
  """A checkpoint claiming more memory than the configured limits allow."""


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A checkpoint whose pickle calls something the importer does not allow."""


def _printable(value, limit=80):
  """Text from the file as printable ASCII (escapes), at most `limit` chars.

  Messages must never echo raw binary: a file's bytes may hold terminal
  control sequences, and a wall of escapes tells the user nothing.
  """
  text = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in str(value))
  return text if len(text) <= limit else text[:limit] + "..."


# --- Restricted unpickling ---------------------------------------------------
#
# pickle builds objects by calling globals the file names (REDUCE, and
# INST/OBJ with arguments) or by creating instances of classes (NEWOBJ) and
# filling them (BUILD). `find_class` never imports anything: allow-listed
# globals map to the functions below, storage types to dtypes, and every
# other name to an inert stand-in class. Calling a stand-in is refused, so an
# unknown class still unpickles (NEWOBJ + BUILD: the reference's
# `metrics_trace`) while `os.system(...)` or `builtins.eval(...)` cannot run.
# The objects handed to the pickle refuse BUILD, so it cannot modify them.

_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "UntypedStorage": "u1",
}


def _refuse_build(name):
  raise UnsafeCheckpointError(
      f"The checkpoint's pickle tries to modify {name} (BUILD); refused.")


class _Allowed:
  """An allow-listed global: callable, but the pickle cannot modify it."""

  __slots__ = ("name", "function")

  def __init__(self, name, function):
    self.name = name
    self.function = function

  def __call__(self, *args, **kwargs):
    return self.function(*args, **kwargs)

  def __setstate__(self, state):
    _refuse_build(self.name)


class _StorageType:
  """`torch.<Type>Storage` named in a persistent id: a dtype, not callable."""

  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name = name
    self.dtype = dtype

  def __setstate__(self, state):
    _refuse_build(f"torch.{self.name}")


class _Storage:
  """A flat storage of `numel` elements named `record` in messages.

  `array` is its `[numel]` data, or None while only the layout is checked
  (the legacy format's first pass, before the data is read).
  """

  __slots__ = ("numel", "array", "record")

  def __init__(self, numel, array, record):
    self.numel = numel
    self.array = array
    self.record = record

  def __setstate__(self, state):
    _refuse_build("a tensor storage")


class _Unread:
  """A tensor whose storage is not read yet (legacy format, first pass)."""

  def __setstate__(self, state):
    _refuse_build("a tensor")


# PyTorch before 0.3 (torchvision's 2017 model zoo files, VGG16 included)
# pickled a tensor as `torch.FloatTensor()` (REDUCE, no arguments) filled by
# BUILD with (storage, offset, size, stride); newer ones call
# `torch._utils._rebuild_tensor(_v2)`.
_TENSOR_TYPES = frozenset(
    f"{kind}Tensor" for kind in ("Double", "Float", "Half", "BFloat16",
                                 "Long", "Int", "Short", "Char", "Byte",
                                 "Bool"))


class _LegacyTensor:
  """A pre-0.3 tensor: empty until BUILD gives its layout, once.

  `array` is then the tensor as `_rebuild_tensor` makes it; the loaded
  object's `_LegacyTensor`s are replaced by their arrays (`_resolve`).
  """

  __slots__ = ("reader", "name", "array")

  def __init__(self, reader, name):
    self.reader = reader
    self.name = name
    self.array = None

  def __setstate__(self, state):
    if self.array is not None:
      _refuse_build(f"a filled torch.{self.name}")
    if not isinstance(state, tuple) or len(state) != 4:
      raise pickle.UnpicklingError(
          f"torch.{self.name} state must be (storage, offset, size, stride), "
          f"got {_printable(state)}.")
    self.array = _rebuild_tensor(self.reader, *state)


def _new_legacy_tensor(reader, name, *args, **kwargs):
  if args or kwargs:  # torch.FloatTensor(n) would allocate n elements
    raise UnsafeCheckpointError(
        f"Refusing to call torch.{name} with arguments while loading a "
        "checkpoint: old checkpoints only create empty tensors.")
  return _LegacyTensor(reader, name)


def _resolve(obj):
  """`obj` with every `_LegacyTensor` in its containers replaced by its array.

  Dicts and lists are updated in place, tuples rebuilt; `ForeignObject`
  contents are resolved too. Shared and self-referencing containers are
  visited once.
  """
  done = {}

  def visit(x):
    if isinstance(x, _LegacyTensor):
      if x.array is None:
        raise pickle.UnpicklingError(f"A torch.{x.name} was never filled.")
      return x.array
    if not isinstance(x, (dict, list, tuple, ForeignObject)):
      return x
    if id(x) in done:
      return done[id(x)]
    done[id(x)] = x
    if isinstance(x, dict):
      for key in list(x):
        x[key] = visit(x[key])
    elif isinstance(x, list):
      x[:] = [visit(v) for v in x]
    elif isinstance(x, tuple):
      done[id(x)] = tuple(visit(v) for v in x)
    else:
      for key in ("args", "kwargs", "state"):
        x.__dict__[key] = visit(x.__dict__[key])
    return done[id(x)]

  return visit(obj)


class ForeignObject:
  """Inert stand-in for an object of a class the importer does not know.

  pickle's NEWOBJ creates it (`args`, `kwargs`) and BUILD fills it (`state`);
  `global_name` names the original class (e.g. the reference's
  `unsup3d.meters.MetricsTrace`). It has none of the original's behaviour.
  Calling the class, as pickle's REDUCE does, is refused.
  """

  global_name = "?"

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.__dict__.update(args=args, kwargs=kwargs, state=None)
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs
    raise UnsafeCheckpointError(_refusal(self.global_name))

  def __setstate__(self, state):
    self.__dict__["state"] = state

  def __repr__(self):
    return f"<stand-in for {self.global_name}>"


def _refusal(name):
  allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _CALLABLES) +
                      ["torch.<Type>Tensor() without arguments"])
  return (f"Refusing to call {name} while loading a checkpoint: loading may "
          f"only call {allowed}. This file is not a plain reference "
          "checkpoint and may be malicious; nothing was executed.")


def _is_count(x):
  """A non-negative int (not a bool): sizes, strides, offsets."""
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _itemsize(dtype):
  return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _array_itemsize(dtype):
  """Bytes per element of the array a storage becomes (bfloat16: float32)."""
  return 4 if dtype == "bfloat16" else np.dtype(dtype).itemsize


class _Limits:
  """The size limits of one load, and the bytes allocated so far."""

  def __init__(self, max_tensor_elements, max_total_bytes):
    if not _is_count(max_tensor_elements) or not _is_count(max_total_bytes):
      raise ValueError("max_tensor_elements and max_total_bytes must be "
                       "non-negative ints, got "
                       f"{max_tensor_elements!r}, {max_total_bytes!r}.")
    self.max_tensor_elements = max_tensor_elements
    self.max_total_bytes = max_total_bytes
    self.total_bytes = 0

  def check_elements(self, numel, what):
    if numel > self.max_tensor_elements:
      raise CheckpointLimitError(
          f"{what} claims {numel} elements, over the limit of "
          f"{self.max_tensor_elements} per tensor or storage "
          "(max_tensor_elements; import_torch --max_tensor_elements). A "
          "tiny file claiming a huge tensor is corrupt or malicious.")

  def charge(self, nbytes, what):
    """Counts `nbytes` about to be allocated for `what`, or refuses."""
    if self.total_bytes + nbytes > self.max_total_bytes:
      raise CheckpointLimitError(
          f"{what} needs {nbytes} bytes; with the {self.total_bytes} already "
          f"allocated that is over the limit of {self.max_total_bytes} bytes "
          "(max_total_bytes; import_torch --max_total_bytes).")
    self.total_bytes += nbytes


def _rebuild_tensor(reader, storage, storage_offset, size, stride,
                    *unused_args, **unused_kwargs):
  """torch._utils._rebuild_tensor(_v2) on NumPy: checked before allocating.

  The layout must stay inside the storage's real elements. A tensor covering
  its whole storage in order is the storage reshaped; a smaller one is
  copied (counted against the byte limit); one with more elements than its
  storage (stride 0, as `expand` makes, or other self-overlap) stays a
  read-only view, never materialised beyond the data.
  """
  del unused_args, unused_kwargs
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(
        f"Tensor rebuild got {type(storage).__name__}, not a storage.")
  counts = lambda xs: isinstance(xs, (tuple, list)) and all(map(_is_count, xs))
  if (not counts(size) or not counts(stride) or len(size) != len(stride) or
      not _is_count(storage_offset)):
    raise pickle.UnpicklingError(
        f"Invalid tensor layout: offset {_printable(storage_offset)}, size "
        f"{_printable(size)}, stride {_printable(stride)}.")
  size, stride = tuple(size), tuple(stride)
  reader.tensors += 1
  what = (f"Tensor #{reader.tensors} (size {_printable(size)}, stride "
          f"{_printable(stride)}, offset {storage_offset}, {storage.record})")
  numel = math.prod(size)
  reader.limits.check_elements(numel, what)
  if numel == 0:
    return _Unread() if storage.array is None else np.zeros(size,
                                                            storage.array.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.numel:
    raise pickle.UnpicklingError(
        f"{what} overruns its storage of {storage.numel} elements.")
  array = storage.array
  if array is None:
    return _Unread()
  contiguous = all(s == math.prod(size[i + 1:]) for i, s in enumerate(stride)
                   if size[i] > 1)
  if contiguous and storage_offset == 0 and numel == array.size:
    return array.reshape(size)
  view = np.lib.stride_tricks.as_strided(
      array[storage_offset:], shape=size,
      strides=tuple(s * array.itemsize for s in stride), writeable=False)
  if numel > array.size:
    return view
  reader.limits.charge(numel * array.itemsize, what)
  return np.array(view)


def _rebuild_parameter(reader, data, *unused_args):
  """torch._utils._rebuild_parameter(_with_state): the tensor itself."""
  del reader, unused_args
  if not isinstance(data, (np.ndarray, _Unread, _LegacyTensor)):
    raise pickle.UnpicklingError("A parameter must wrap a tensor.")
  return data


def _encode_latin1(reader, text, encoding):
  """_codecs.encode as protocol-2 pickles use it for bytes objects."""
  del reader
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafeCheckpointError(
        f"Refusing _codecs.encode with encoding {_printable(encoding)}.")
  return text.encode("latin-1")


def _plain(function):
  return lambda reader, *args: function(*args)


_CALLABLES = {
    ("collections", "OrderedDict"): _plain(collections.OrderedDict),
    ("builtins", "set"): _plain(set),
    ("builtins", "frozenset"): _plain(frozenset),
    ("_codecs", "encode"): _encode_latin1,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler of torch.save's pickles that imports and executes nothing.

  `load_storage(dtype, key, numel)` returns the `_Storage` of a persistent
  id; `limits` is the load's `_Limits`.
  """

  def __init__(self, file, limits, load_storage=None):
    super().__init__(file)
    self.limits = limits
    self.tensors = 0
    self._load_storage = load_storage
    self._storages = {}
    self._stand_ins = {}

  def find_class(self, module, name):
    if (module, name) in _CALLABLES:
      function = _CALLABLES[(module, name)]
      return _Allowed(f"{module}.{name}",
                      lambda *args, **kwargs: function(self, *args, **kwargs))
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    if module == "torch" and name in _TENSOR_TYPES:
      return _Allowed(f"torch.{name}", lambda *args, **kwargs:
                      _new_legacy_tensor(self, name, *args, **kwargs))
    full_name = _printable(f"{module}.{name}")
    if full_name not in self._stand_ins:
      self._stand_ins[full_name] = type(
          "ForeignObject", (ForeignObject,), {"global_name": full_name})
    return self._stand_ins[full_name]

  def persistent_load(self, pid):
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or
        pid[0] not in ("storage", b"storage") or self._load_storage is None):
      raise pickle.UnpicklingError(
          f"Unsupported persistent id {_printable(pid)}: not a tensor "
          "storage.")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    view = pid[5] if len(pid) == 6 else None
    if (not isinstance(storage_type, _StorageType) or
        not isinstance(key, str) or not _is_count(numel)):
      raise pickle.UnpicklingError(f"Invalid storage id {_printable(pid)}.")
    if key not in self._storages:
      self._storages[key] = self._load_storage(storage_type.dtype, key, numel)
    if view is None:
      return self._storages[key]
    # The legacy format's storage views: (view_key, offset, size) elements.
    if (not isinstance(view, tuple) or len(view) != 3 or
        not isinstance(view[0], str) or not _is_count(view[1]) or
        not _is_count(view[2])):
      raise pickle.UnpicklingError(
          f"Invalid storage view {_printable(view)}.")
    view_key, offset, size = view
    if view_key not in self._storages:
      root = self._storages[key]
      if offset + size > root.numel:
        raise pickle.UnpicklingError(
            f"Storage view {_printable(view)} overruns {root.record} of "
            f"{root.numel} elements.")
      array = (None if root.array is None else
               root.array[offset:offset + size])
      self._storages[view_key] = _Storage(
          size, array, f"view {_printable(view_key)} of {root.record}")
    return self._storages[view_key]


def _to_array(data, dtype, little_endian):
  """Raw storage bytes (a bytearray) -> a 1-D native-endian, writeable array.

  bfloat16 becomes float32 (NumPy has no bfloat16). Native little-endian
  data is used in place, without a copy.
  """
  order = "<" if little_endian else ">"
  if dtype == "bfloat16":
    bits = np.frombuffer(data, order + "u2").astype(np.uint32) << 16
    return bits.view(np.float32)
  array = np.frombuffer(data, np.dtype(dtype).newbyteorder(order))
  if array.dtype.isnative:
    return array
  return array.astype(array.dtype.newbyteorder("="))


def _read_exactly(f, nbytes, what):
  """`nbytes` from the file-like `f` into a new bytearray, or raises.

  Reads in chunks, so a member that is shorter than its header said, or a
  file that ends early, costs no more than the bytes really there.
  """
  data = bytearray(nbytes)
  view, done = memoryview(data), 0
  while done < nbytes:
    # Small chunks: a zip member's readinto reads into a temporary first.
    n = f.readinto(view[done:done + (1 << 20)])
    if not n:
      raise CheckpointError(f"truncated or corrupt file: {what} ends after "
                            f"{done} of {nbytes} bytes.")
    done += n
  return data


def _read_member(archive, name, nbytes, limits):
  """`nbytes` of zip member `name`, checked against its header and limits.

  `nbytes=None` reads the whole member (its header's size, which must be
  within the limits); decompression stops after `nbytes` either way, so a
  small archive cannot inflate into more memory than the checks allowed.
  """
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise CheckpointError(f"Record {_printable(name)} is missing.") from None
  if nbytes is None:
    nbytes = info.file_size
  elif info.file_size < nbytes:
    raise CheckpointError(
        f"Record {_printable(name)} holds {info.file_size} bytes, fewer than "
        f"the {nbytes} its tensors need: truncated or corrupt.")
  limits.charge(nbytes, f"Record {_printable(name)}")
  with archive.open(info) as f:
    return _read_exactly(f, nbytes, f"Record {_printable(name)}")


def _load_zip(archive, limits):
  """torch.save's zip format (PyTorch >= 1.6): `<root>/data.pkl` + data/."""
  names = archive.namelist()
  pickles = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
  if len(pickles) != 1:
    if any(n.endswith("/constants.pkl") for n in names):
      raise CheckpointError("This is a TorchScript archive (torch.jit.save), "
                            "not a torch.save checkpoint.")
    raise CheckpointError("No <root>/data.pkl: not a torch.save zip archive.")
  root = pickles[0][:-len("data.pkl")]
  little = True
  if root + "byteorder" in names:
    if archive.getinfo(root + "byteorder").file_size > _MAX_SMALL_RECORD_BYTES:
      raise CheckpointError(f"Record {root}byteorder is too large.")
    order = bytes(_read_member(archive, root + "byteorder", None, limits))
    if order.strip() not in (b"little", b"big"):
      raise CheckpointError(f"Record {root}byteorder is neither 'little' "
                            "nor 'big'.")
    little = order.strip() == b"little"

  def load_storage(dtype, key, numel):
    if not re.fullmatch(r"[A-Za-z0-9_.]+", key):
      raise pickle.UnpicklingError(f"Invalid storage key {_printable(key)}.")
    name = f"{root}data/{key}"
    limits.check_elements(numel, f"Storage record {name}")
    data = _read_member(archive, name, numel * _itemsize(dtype), limits)
    if dtype == "bfloat16":  # The float32 copy is twice the raw bytes.
      limits.charge(numel * 2, f"Storage record {name} as float32")
    return _Storage(numel, _to_array(data, dtype, little), f"record {name}")

  data_pkl = _read_member(archive, pickles[0], None, limits)
  return _RestrictedUnpickler(io.BytesIO(data_pkl), limits,
                              load_storage).load()


class _BoundedFile:
  """Read-only file view for the unpickler, never reading past `end`.

  pickle allocates what an opcode claims (BINBYTES8 of 2**40 bytes) before
  reading it; capping each read at the bytes left in the file keeps a
  300-byte file from asking for terabytes.
  """

  def __init__(self, f, end):
    self._f = f
    self._end = end

  def read(self, n=-1):
    left = max(0, self._end - self._f.tell())
    return self._f.read(left if n is None or n < 0 else min(n, left))

  def readline(self, n=-1):
    left = max(0, self._end - self._f.tell())
    return self._f.readline(left if n is None or n < 0 else min(n, left))


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


def _load_legacy(f, limits):
  """torch.save's legacy stream (PyTorch < 1.6, the reference's 1.2).

  Pickles of the magic number, the protocol and the system info, the object
  pickle, the list of storage keys, then each storage as an int64 element
  count and raw data. The object pickle needs the storages, which follow
  it: a first pass checks every claimed size against the file's length and
  the limits without allocating anything, then the storages are read, and
  a second pass builds the tensors.
  """
  file_size = os.fstat(f.fileno()).st_size
  bounded = _BoundedFile(f, file_size)
  if _RestrictedUnpickler(bounded, limits).load() != _LEGACY_MAGIC:
    raise CheckpointError("Not a torch.save file (bad magic number).")
  if _RestrictedUnpickler(bounded, limits).load() != _LEGACY_PROTOCOL:
    raise CheckpointError("Unsupported legacy torch.save protocol version.")
  sys_info = _RestrictedUnpickler(bounded, limits).load()
  little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
  start = f.tell()
  claimed = {}

  def record(dtype, key, numel):
    what = f"Storage {_printable(key)}"
    limits.check_elements(numel, what)
    if numel * _itemsize(dtype) > file_size:
      raise CheckpointError(
          f"{what} claims {numel} elements of {dtype} "
          f"({numel * _itemsize(dtype)} bytes), more than the whole file's "
          f"{file_size} bytes: truncated or corrupt.")
    claimed[key] = (dtype, numel)
    return _Storage(numel, None, f"storage {_printable(key)}")

  _RestrictedUnpickler(bounded, limits, record).load()
  keys = _RestrictedUnpickler(bounded, limits).load()
  if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
      or set(keys) != set(claimed)):
    raise CheckpointError("The list of storage keys does not match the "
                          "storages the tensors use: corrupt.")
  storages = {}
  for key in keys:
    dtype, numel = claimed[key]
    what = f"Storage {_printable(key)}"
    header = f.read(8)
    if len(header) != 8:
      raise CheckpointError(f"truncated or corrupt file: {what}'s element "
                            "count is missing.")
    count = int.from_bytes(header, "little" if little else "big", signed=True)
    if count < numel:
      raise CheckpointError(f"{what} holds {count} elements, fewer than the "
                            f"{numel} its tensors claim: corrupt.")
    limits.check_elements(count, what)
    nbytes = count * _itemsize(dtype)
    if nbytes > file_size - f.tell():
      raise CheckpointError(
          f"truncated or corrupt file: {what} holds {count} elements of "
          f"{dtype} ({nbytes} bytes), the file has {file_size - f.tell()} "
          "left.")
    limits.charge(count * _array_itemsize(dtype), what)
    data = _read_exactly(f, nbytes, what)
    storages[key] = _Storage(count, _to_array(data, dtype, little),
                             f"storage {_printable(key)}")
  f.seek(start)
  return _RestrictedUnpickler(bounded, limits,
                              lambda dtype, key, numel: storages[key]).load()


_ZIP_MAGIC = b"PK\x03\x04"

# Errors the parsers themselves raise on malformed input; their messages
# may quote the file, so they are re-worded (`_describe`).
_FORMAT_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile,
                  IndexError, KeyError, TypeError, ValueError,
                  UnicodeDecodeError, OverflowError, MemoryError,
                  RecursionError, AttributeError)


def _describe(error):
  """A parser error as printable text: why, never the file's bytes."""
  if isinstance(error, EOFError) or "truncated" in str(error):
    return "the data ends early"
  if isinstance(error, zipfile.BadZipFile):
    return f"damaged zip archive: {_printable(error, 300)}"
  if isinstance(error, MemoryError):
    return "it claims more memory than is available"
  if isinstance(error, RecursionError):
    return "objects nested too deeply"
  return f"{type(error).__name__}: {_printable(error, 300)}"


def load_torch_file(path, max_tensor_elements=DEFAULT_MAX_TENSOR_ELEMENTS,
                    max_total_bytes=DEFAULT_MAX_TOTAL_BYTES):
  """Reads a `torch.save` file without executing code from it.

  Args:
    path: a file written by `torch.save` (zip or legacy format).
    max_tensor_elements: most elements any one tensor or storage may claim
      (2**28, 1 GiB of float32, by default).
    max_total_bytes: most bytes the load may allocate for storages, tensor
      copies and the zip's pickle (2 GiB by default).

  Returns:
    The saved object: tensors as `np.ndarray` (bfloat16 as float32; a
    tensor with more elements than its storage, e.g. from `expand`, as a
    read-only strided view), OrderedDicts and plain containers; objects of
    unknown classes as inert `ForeignObject`s.

  Raises:
    UnsafeCheckpointError: the pickle calls anything but tensor rebuilding,
      OrderedDict and plain containers (e.g. `os.system`); names the global.
    CheckpointLimitError: a tensor or storage claims more than the limits;
      names it and the limit.
    CheckpointError: the file is no torch.save file, or is truncated or
      corrupt; the message names the file and never quotes its bytes.
  """
  limits = _Limits(max_tensor_elements, max_total_bytes)
  try:
    with open(path, "rb") as f:
      is_zip = f.read(4) == _ZIP_MAGIC
    if is_zip and not zipfile.is_zipfile(path):
      raise CheckpointError(
          "truncated or corrupt: it starts as a zip archive (torch.save of "
          "PyTorch >= 1.6) but the archive's directory at its end is "
          "missing or damaged. Copy or download it again.")
    if is_zip:
      with zipfile.ZipFile(path) as archive:
        return _resolve(_load_zip(archive, limits))
    with open(path, "rb") as f:
      return _resolve(_load_legacy(f, limits))
  except UnsafeCheckpointError as e:
    raise UnsafeCheckpointError(f"{path}: {e}") from None
  except CheckpointError as e:
    raise type(e)(f"{path}: {e}") from None
  except _FORMAT_ERRORS as e:
    # Our own layout checks raise UnpicklingError with printable messages;
    # pickle's and zipfile's own may quote raw bytes and are re-worded.
    reason = _describe(e)
    raise CheckpointError(
        f"{path}: not a torch.save file, or truncated or corrupt "
        f"({reason}).") from None
