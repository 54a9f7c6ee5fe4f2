"""A restricted unpickler for files made by other programs (faceswap's ``.fsa``): plain data and
numeric numpy arrays, and nothing that could run code.

:func:`restricted_loads` never runs the plain unpickler. Its :class:`RestrictedUnpickler`
refuses every global except the few names numpy's pickles of plain numeric arrays use
(``numpy[._]core.multiarray._reconstruct`` and ``scalar``, ``numpy[._]core.numeric._frombuffer``,
``numpy.ndarray``, ``numpy.dtype``, and from protocol-2 pickles ``_codecs.encode`` of latin-1
text and ``bytes()`` without arguments). For those it substitutes inert stand-ins of this
module, which only record and check their arguments: no numpy (or other) code runs while
unpickling. An array is then rebuilt with
:func:`numpy.frombuffer` from its recorded bytes, only for boolean, integer and float dtypes
whose byte count matches the shape. Object arrays, structured dtypes, every other global and
every persistent id raise :class:`pickle.UnpicklingError`.

What comes back is made of dicts, lists, tuples, sets, strings, bytes, numbers, booleans and
None, with numpy arrays either as :class:`numpy.ndarray` (protocol 5) or as
:class:`PickledArray` holders (protocols 2 to 4: the array is filled in after the holder is
placed in its container); :func:`unwrap` gives the array of either.
"""
from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["PickledArray", "RestrictedUnpickler", "restricted_loads", "unwrap"]

_NUMERIC = frozenset(f"{kind}{size}" for kind, sizes in (("b", "1"), ("i", "1248"),
                                                          ("u", "1248"), ("f", "248"))
                     for size in sizes)


class _NdarrayMark:
    """Stands in for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""

    def __new__(cls, *args: object) -> _NdarrayMark:
        raise pickle.UnpicklingError("refused a call of numpy.ndarray")


class _DType:
    """Stands in for ``numpy.dtype(spec, align, copy)``: records a plain numeric spec and, from
    its pickled state, the byte order."""

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        if not isinstance(spec, str) or spec not in _NUMERIC:
            raise pickle.UnpicklingError(f"refused numpy dtype {spec!r}: only booleans, "
                                         "integers and floats are read")
        self.spec, self.order = spec, "="

    def __setstate__(self, state: object) -> None:
        if (not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "=")
                or any(part is not None for part in state[2:5])):
            raise pickle.UnpicklingError(f"refused numpy dtype state {state!r:.80}")
        self.order = state[1]

    def dtype(self) -> np.dtype[Any]:
        return np.dtype(("" if self.order in ("|", "=") else self.order) + self.spec)


def _to_array(raw: object, dtype: object, shape: object, fortran: bool) -> npt.NDArray[Any]:
    """An array rebuilt from recorded bytes, after checking every part."""
    if not isinstance(dtype, _DType) or not hasattr(dtype, "spec"):
        raise pickle.UnpicklingError("refused an array without a plain numpy dtype")
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"refused an array of shape {shape!r:.80}")
    if not isinstance(raw, bytes | bytearray):
        raise pickle.UnpicklingError(f"refused array data of type {type(raw).__name__}")
    kind = dtype.dtype()
    if len(raw) != math.prod(shape) * kind.itemsize:
        raise pickle.UnpicklingError(f"refused array data: {len(raw)} bytes for shape {shape} "
                                     f"of {kind}")
    flat = np.frombuffer(bytes(raw), dtype=kind)
    return flat.reshape(shape, order="F" if fortran else "C").astype(kind.newbyteorder("="))


class PickledArray:
    """Stands in for the array ``_reconstruct`` makes; its pickled state holds the data."""

    array: npt.NDArray[Any] | None = None

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError(f"refused numpy array state {state!r:.80}")
        shape, dtype, fortran, raw = state
        self.array = _to_array(raw, dtype, shape, bool(fortran))


def _reconstruct(kind: object, shape: object, typecode: object) -> PickledArray:
    if kind is not _NdarrayMark:
        raise pickle.UnpicklingError("refused numpy _reconstruct of anything but an ndarray")
    return PickledArray()


def _frombuffer(raw: object, dtype: object, shape: object, order: object) -> npt.NDArray[Any]:
    return _to_array(raw, dtype, shape, order == "F")


def _scalar(dtype: object, raw: object = b"") -> Any:
    return _to_array(raw, dtype, (), False).item()


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({text!r:.40}, {encoding!r:.20})")
    return text.encode("latin-1")


def _bytes(*args: object) -> bytes:
    """Protocol-2 pickles write ``b""`` as a call of ``bytes()``: only that call is allowed."""
    if args:
        raise pickle.UnpicklingError(f"refused bytes{args!r:.60}")
    return b""


_STAND_INS: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): _NdarrayMark, ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _latin1, ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes}


class RestrictedUnpickler(pickle.Unpickler):
    """Plain containers, numbers, strings and bytes, plus numeric numpy arrays rebuilt by the
    inert stand-ins above. Every other global, and every persistent id, is refused."""

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise pickle.UnpicklingError(f"refused global '{module}.{name}': only plain "
                                         "containers, numbers, strings, bytes and numeric numpy "
                                         "arrays are read")
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (see the module docstring).

    Raises
    ------
    pickle.UnpicklingError
        If the data refers to anything but plain data and numeric numpy arrays.
    EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError
        If the data is malformed (as the plain unpickler raises them).
    """
    return RestrictedUnpickler(io.BytesIO(data)).load()


def unwrap(value: Any) -> Any:
    """The array a :class:`PickledArray` holds, or ``value`` itself."""
    return value.array if isinstance(value, PickledArray) else value
