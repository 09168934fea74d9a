"""Reading EDM and RDM checkpoints as data, never as code.

EDM's network snapshots (``network-snapshot-*.pkl``) and training states (``*.pt``) store every
network as a *persistence record*: the class name, the source code of its module and the
object's state. The released loaders ``exec`` that source, so a file from an untrusted mirror
can run anything. Here the pickle stream is read by an unpickler that allows only what these
files need, each mapped to something that builds data:

* tensors and storages (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``, the
  ``torch.*Storage`` types of a torch zip file; a storage embedded in a plain pickle is itself
  read with ``torch.load(weights_only=True)``);
* ``collections.OrderedDict``, ``builtins.set``;
* ``_codecs.encode(text, 'latin1')``, which is how pickle protocol 2 (``torch.save``'s default)
  writes ``bytes``: any other encoding is refused;
* NumPy scalars, dtypes and arrays of the plain number and bool dtypes of :data:`NUMPY_DTYPES`,
  under their NumPy 1 (``numpy.core.multiarray``) and NumPy 2 (``numpy._core.multiarray``)
  names: a dtype is rebuilt from its name and may change only its byte order (object,
  structured, void, string and datetime dtypes, fields, sub-arrays and flags are refused);
* EDM's persistence records (``torch_utils.persistence._reconstruct_persistent_obj``) as
  :class:`Record` objects (class name and state; the module source is kept as a string and
  never compiled or run), for the class names in :data:`KNOWN_CLASSES` only;
* ``torch.nn`` container modules and ``dnnlib.util.EasyDict`` as plain records and dicts.

Anything else — ``os.system``, ``builtins.eval``, an unknown class — raises :class:`UnsafeFile`
naming the file and the offending name; nothing is executed.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import torch

# Class names of EDM's and RDM's persistent classes that relaydiff reads (networks, their
# layers, losses and the augmentation pipe).
KNOWN_CLASSES = frozenset({
    "EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "DhariwalUNet", "SongUNet",
    "UNetBlock", "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding", "FourierEmbedding",
    "EDMLoss", "VPLoss", "VELoss", "BlurLoss", "AugmentPipe",
})
TORCH_CONTAINERS = frozenset({"ModuleDict", "ModuleList", "Sequential"})
# NumPy dtypes (as pickles name them) of the scalars and arrays relaydiff reads: bool, integers,
# floats and complex numbers.
NUMPY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                          "c8", "c16"})
NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")  # NumPy 1, NumPy 2


class UnsafeFile(ValueError):  # noqa: N818 (the file, not an error, is what is unsafe)
    """A checkpoint that holds something relaydiff will not load (named in the message)."""


@dataclass
class Record:
    """An object of a persistent class, read as data: ``class_name`` and its ``state``
    (``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, …)."""

    class_name: str
    state: dict = field(default_factory=dict)
    module_src: str = ""  # kept as text, never run

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def modules(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state dict of this module tree (parameters and persistent buffers)."""
        out: dict[str, torch.Tensor] = {}
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is not None and name not in skip:
                    out[prefix + name] = value.detach()
        for name, child in self.modules().items():
            if isinstance(child, Record):
                out.update(child.tensors(f"{prefix}{name}."))
        return out

    def __setstate__(self, state: dict) -> None:  # BUILD of a torch container module
        self.class_name = type(self).container
        self.state = dict(state) if isinstance(state, dict) else {}
        self.module_src = ""


class ContainerRecord(Record):
    """A ``torch.nn`` container module (``ModuleDict``, …) as a record; one subclass per name,
    which pickle's NEWOBJ instantiates without running any constructor."""

    container = ""


CONTAINERS = {name: type(name, (ContainerRecord,), {"container": f"torch.nn.{name}"})
              for name in TORCH_CONTAINERS}


class EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict."""


def _persistent_record(meta: dict) -> Record:
    name = meta.get("class_name") if isinstance(meta, dict) else None
    if name not in KNOWN_CLASSES:
        raise UnsafeFile(f"a persistence record of class {name!r}, which is not an EDM/RDM network, "
                         "loss or augmentation class")
    state = meta.get("state")
    return Record(name, dict(state) if isinstance(state, dict) else {}, str(meta.get("module_src", "")))


def _container_record(cls: Any, base: type, state: Any) -> Record:
    """``copyreg._reconstructor`` for the torch container modules only (their state follows)."""
    if not (isinstance(cls, type) and issubclass(cls, ContainerRecord)):
        raise UnsafeFile(f"copyreg._reconstructor of {cls!r}")
    return object.__new__(cls)


def _storage_from_bytes(data: bytes):
    """A storage pickled on its own (plain-pickle files): itself a torch file, read safely."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    return data.detach()


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: the ``bytes`` of a protocol-2 pickle. Anything but a
    string, or any other encoding, is refused."""
    if type(text) is not str or type(encoding) is not str or encoding != "latin1":
        shown = repr(encoding)[:40] if type(encoding) is str else f"a {type(encoding).__name__}"
        raise UnsafeFile(f"_codecs.encode of a {type(text).__name__} with the encoding {shown} "
                         "(protocol-2 bytes are 'latin1' strings only)")
    return text.encode("latin1")


class NumpyDType:
    """``numpy.dtype(name, align, copy)`` read as data: ``name`` must be in :data:`NUMPY_DTYPES`,
    and the state that pickle's BUILD then gives may set the byte order only (a state with fields,
    a sub-array or flags would make NumPy read numbers as object pointers). ``dtype`` is the
    NumPy dtype, made here."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if type(name) is not str or name not in NUMPY_DTYPES:
            shown = repr(name)[:40] if type(name) is str else f"of a {type(name).__name__}"
            raise UnsafeFile(f"a NumPy dtype {shown}; relaydiff reads the dtypes "
                             f"{', '.join(sorted(NUMPY_DTYPES))} only")
        self.dtype = np.dtype(name)

    def __setstate__(self, state: Any) -> None:
        order = state[1] if type(state) is tuple and len(state) == 8 and type(state[1]) is str else ""
        dtype = self.dtype.newbyteorder(order) if order in ("<", ">", "|") else None
        # The state NumPy itself gives this dtype: (3, order, None, None, None, -1, -1, flags).
        expected = dtype.__reduce__()[2] if dtype is not None else None
        if expected is None or tuple(map(type, state)) != tuple(map(type, expected)) or state != expected:
            raise UnsafeFile(f"a NumPy {self.dtype} dtype with a state other than its byte order")
        self.dtype = dtype


def _numpy_scalar(dtype: Any, data: Any) -> np.generic:
    """``numpy.core.multiarray.scalar``: a NumPy number of an allowed dtype, from its bytes."""
    if not isinstance(dtype, NumpyDType):
        raise UnsafeFile(f"a NumPy scalar of a {type(dtype).__name__} instead of a dtype")
    if type(data) is not bytes or len(data) != dtype.dtype.itemsize:
        raise ValueError(f"a NumPy {dtype.dtype} scalar whose data is not {dtype.dtype.itemsize} bytes")
    return np.frombuffer(data, dtype.dtype)[0]


def _ndarray(*args: Any) -> NoReturn:
    """``numpy.ndarray``: only the class argument of ``_reconstruct``, never called."""
    raise UnsafeFile("a call of numpy.ndarray")


class NumpyArray(np.ndarray):
    """An ndarray of a pickle: ``_reconstruct`` makes it empty, and pickle's BUILD fills it from
    ``(version, shape, dtype, fortran, data)`` whose dtype must be a :class:`NumpyDType`."""

    def __setstate__(self, state: Any) -> None:
        if not (type(state) is tuple and len(state) == 5 and isinstance(state[2], NumpyDType)
                and type(state[4]) is bytes):
            raise UnsafeFile("a NumPy array state other than (version, shape, allowed dtype, order, "
                             "bytes)")
        version, shape, dtype, fortran, data = state
        super().__setstate__((version, shape, dtype.dtype, fortran, data))


def _numpy_reconstruct(cls: Any, shape: Any, dtype: Any) -> NumpyArray:
    """``numpy.core.multiarray._reconstruct``: an empty array that the following BUILD fills
    (its shape and dtype arguments are placeholders)."""
    if cls is not _ndarray:
        raise UnsafeFile(f"a NumPy array of {cls.__name__ if isinstance(cls, type) else type(cls).__name__}")
    return np.ndarray.__new__(NumpyArray, (0,), np.int8)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "object"): object,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("copyreg", "_reconstructor"): _container_record,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "dtype"): NumpyDType,
    ("numpy", "ndarray"): _ndarray,
    **{(m, "scalar"): _numpy_scalar for m in NUMPY_MODULES},
    **{(m, "_reconstruct"): _numpy_reconstruct for m in NUMPY_MODULES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals come from :data:`_ALLOWED` only."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 streams (torch.save) name Python 2 modules (__builtin__.set): map them as
        # pickle's own find_class does, then look up the allowed name.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage") and hasattr(torch, name):
            return getattr(torch, name)  # the storage types of a torch zip file
        if module.startswith("torch.nn.modules.") and name in CONTAINERS:
            return CONTAINERS[name]
        raise UnsafeFile(f"the global {module}.{name}, which relaydiff does not load")


restricted_pickle = SimpleNamespace(Unpickler=RestrictedUnpickler, load=None, __name__="pickle")


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in an EDM/RDM ``.pkl`` (plain pickle) or ``.pt`` (torch zip) file,
    read with :class:`RestrictedUnpickler`; ``ValueError`` naming the file for anything it
    refuses or cannot read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        if zipfile.is_zipfile(path):
            # Not a plain load: pickle_module makes torch unpickle with RestrictedUnpickler, which
            # refuses every global outside its allow-list (weights_only=False only lets torch
            # accept a pickle_module; weights_only=True would replace it with torch's own).
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True,
                              pickle_module=restricted_pickle)
        with open(path, "rb") as f:
            if f.read(1) == b"\x80":  # pickle's PROTO opcode
                f.seek(0)
                return RestrictedUnpickler(f).load()
    except UnsafeFile as e:
        raise UnsafeFile(f"{path}: refused: {e}; nothing was run or written") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, AttributeError, ValueError,
            TypeError, IndexError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: truncated or damaged checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    raise ValueError(f"{path}: not a pickle or torch file (an EDM .pkl snapshot or a .pt training "
                     "state)")
