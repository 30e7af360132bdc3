"""Load pickles from untrusted sources (few-shot caches, official checkpoints) without running their code.

A pickle may name any importable global and call it (``os.system``, ``builtins.eval``, ...). The unpickler
here resolves only an allowlist: what torch writes for tensors, plain containers, numpy arrays and the
caller's own mapping. Every other global becomes a ``PickledGlobal`` stub class: "calling" it, ``__new__``,
``__setstate__`` and item/append ops only record their arguments, so an official Dassl checkpoint that
pickled a whole ``ConstantWarmupScheduler`` (with its SGD optimizer) still loads, its tensors intact and
its objects inert.
"""
import _codecs
import _compat_pickle
import builtins
import collections
import copyreg
import functools
import io
import os
import pickle
import types

import numpy as np
import torch

__all__ = ["PickledGlobal", "RestrictedUnpickler", "StorageTooLargeError", "load", "loads", "torch_load",
           "default_allowed_globals"]


def _numpy_core():
    # numpy >= 2 moved numpy.core to numpy._core; pickles from either era name one or the other
    return getattr(np, "_core", None) or np.core


_TORCH_REBUILD_FUNCTIONS = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_qtensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
)


def default_allowed_globals() -> dict:
    """(module, name) -> object that any pickle may reference."""
    allowed = {}
    for name in ("set", "frozenset", "slice", "complex", "range", "bytearray", "bytes", "int", "float",
                 "str", "bool", "tuple", "list", "dict", "object"):
        allowed[("builtins", name)] = getattr(builtins, name)
    for name in ("OrderedDict", "defaultdict", "Counter", "deque"):
        allowed[("collections", name)] = getattr(collections, name)
    # protocol 0/1 objects and protocol-2 bytes; both only rebuild data
    allowed[("copyreg", "_reconstructor")] = copyreg._reconstructor
    allowed[("_codecs", "encode")] = _codecs.encode

    # What torch.save writes: tensor/parameter rebuild functions, dtypes, layouts, sizes, devices
    for name in _TORCH_REBUILD_FUNCTIONS:
        if hasattr(torch._utils, name):  # listed by name, not by prefix: new torch helpers get reviewed first
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    for name in ("_rebuild_from_type", "_rebuild_from_type_v2"):
        if hasattr(torch._tensor, name):
            allowed[("torch._tensor", name)] = getattr(torch._tensor, name)
    allowed[(__name__, "_restore_stub")] = _restore_stub  # a stub saved again loads as the same stub
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    allowed[("torch", "Tensor")] = torch.Tensor
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    for name, value in vars(torch).items():
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = value
        elif isinstance(value, type) and name.endswith("Storage"):
            allowed[("torch", name)] = value

    core = _numpy_core()
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        if hasattr(core.numeric, "_frombuffer"):
            allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


@functools.lru_cache(maxsize=None)
def _default_allowed():
    return default_allowed_globals()


class PickledGlobal:
    """Inert stand-in for a global the pickle named but the allowlist does not hold.

    The stub class carries ``pickled_module`` / ``pickled_name``; an instance records what the pickle did
    with it: ``pickled_args`` / ``pickled_kwargs`` (call or ``__new__``), ``pickled_state``
    (``__setstate__``), ``pickled_items`` (list appends) and ``pickled_entries`` (item assignment).
    Other attribute names read through a dict state (an object's ``__dict__`` or ``__getstate__``), so
    ``ckpt["scheduler"]["successor"].optimizer.param_groups`` works on a stubbed Dassl scheduler.
    """

    pickled_module = ""
    pickled_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(pickled_args=args, pickled_kwargs=kwargs, pickled_state=None,
                            pickled_items=[], pickled_entries={})
        return obj

    def __init__(self, *args, **kwargs):
        pass  # __new__ recorded everything

    def __setstate__(self, state):
        self.__dict__["pickled_state"] = state

    def __setitem__(self, key, value):
        self.pickled_entries[key] = value

    def __getitem__(self, key):
        return self.pickled_entries[key]

    def append(self, item):
        self.pickled_items.append(item)

    def extend(self, items):
        self.pickled_items.extend(items)

    def __getattr__(self, name):
        # only reached for names not set on the stub: look them up in a dict state
        state = self.__dict__.get("pickled_state")
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # the (dict, slotstate) form
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __reduce__(self):
        # copy.deepcopy and re-saving a loaded checkpoint keep the stub as it is
        return _restore_stub, (self.pickled_module, self.pickled_name, dict(self.__dict__))

    def __repr__(self):
        return f"<{self.pickled_module}.{self.pickled_name} (stub: not an allowed global)>"


_stub_classes = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stub_classes:
        _stub_classes[key] = type(
            f"PickledGlobal[{module}.{name}]", (PickledGlobal,), {"pickled_module": module, "pickled_name": name}
        )
    return _stub_classes[key]


def _restore_stub(module, name, fields):
    obj = object.__new__(_stub_class(module, name))
    obj.__dict__.update(fields)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` hands out only allowlisted globals, stubs for the rest.

    ``extra_allowed`` (class attribute) and ``allowed`` (argument) add ``(module, name) -> object`` entries,
    e.g. to load Dassl's Datum into vlprompt's. ``stubbed`` lists the globals that were replaced.
    """

    extra_allowed: dict = {}

    def __init__(self, file, *, allowed=None, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = {**_default_allowed(), **self.extra_allowed, **(allowed or {})}
        self.stubbed = []

    def find_class(self, module, name):
        # protocol < 3 pickles (torch.save uses 2) spell python-2 names: __builtin__.set, copy_reg, ...
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        self.stubbed.append(f"{module}.{name}")
        return _stub_class(module, name)


def load(file_or_path, allowed=None):
    """Unpickle a path or binary file object; non-allowlisted globals become ``PickledGlobal`` stubs."""
    if isinstance(file_or_path, (str, os.PathLike)):
        with open(file_or_path, "rb") as f:
            return RestrictedUnpickler(f, allowed=allowed).load()
    return RestrictedUnpickler(file_or_path, allowed=allowed).load()


def loads(data: bytes, allowed=None):
    return load(io.BytesIO(data), allowed=allowed)


class StorageTooLargeError(ValueError):
    """A pickled tensor storage declares more bytes than its file could hold."""


def _storage_nbytes(saved_id):
    """Bytes a torch persistent id ('storage', storage_type, key, location, numel[, view]) asks to allocate."""
    if not (isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] == "storage"):
        return 0
    storage_type, numel = saved_id[1], saved_id[4]
    if not isinstance(numel, int):
        return 0
    dtype = getattr(storage_type, "dtype", torch.uint8)
    if storage_type is torch.UntypedStorage or not isinstance(dtype, torch.dtype):
        dtype = torch.uint8
    return numel * torch._utils._element_size(dtype)


class _SizeGuardedUnpickler(RestrictedUnpickler):
    """torch.load sets ``persistent_load`` to the function that allocates and reads each storage; this wraps
    it so a storage whose declared size exceeds ``max_storage_bytes`` is refused before any allocation."""

    max_storage_bytes = None

    @property
    def persistent_load(self):
        return pickle.Unpickler.__dict__["persistent_load"].__get__(self)

    @persistent_load.setter
    def persistent_load(self, function):
        limit = self.max_storage_bytes

        def guarded(saved_id):
            nbytes = _storage_nbytes(saved_id)
            if limit is not None and nbytes > limit:
                raise StorageTooLargeError(
                    f"a tensor storage declares {nbytes:,} bytes, more than the {limit:,} bytes of the file")
            return function(saved_id)

        pickle.Unpickler.__dict__["persistent_load"].__set__(self, guarded)


def _pickle_module(allowed, max_storage_bytes=None):
    """A module-like object for ``torch.load(pickle_module=...)``: torch subclasses its ``Unpickler`` and
    calls the module-level ``load`` for the legacy format's headers, so both must be restricted."""
    unpickler = type("Unpickler", (_SizeGuardedUnpickler,), {"extra_allowed": dict(allowed or {}),
                                                             "max_storage_bytes": max_storage_bytes})
    module = types.ModuleType("vlprompt_safe_pickle")
    module.Unpickler = unpickler
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    module.loads = lambda data, **kwargs: unpickler(io.BytesIO(data), **kwargs).load()
    return module


def torch_load(path, map_location="cpu", allowed=None, max_storage_bytes=None):
    """``torch.load`` of a checkpoint from anywhere: tensors load as usual, foreign objects as stubs.
    ``max_storage_bytes``: refuse (StorageTooLargeError) a storage declaring more bytes, before allocating it."""
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_pickle_module(allowed, max_storage_bytes))
