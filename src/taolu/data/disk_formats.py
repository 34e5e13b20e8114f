"""The bounded, safe readers of the on-disk formats torchvision's data sets come in: IDX
(MNIST and its family), Python pickles of numpy arrays (CIFAR), read by an unpickler that can
build numpy arrays and nothing else, and MATLAB 5 files (SVHN) checked for zlib bombs before
scipy reads them. Each reads what a file really holds, never what its header claims, and
names the file in every refusal. disk_sets assembles the data sets from them."""

from __future__ import annotations

import gzip
import importlib
import io
import math
import pickle
import pickletools
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from taolu.config import MAX_IMAGE_SIDE
from taolu.errors import DataError


def _numpy_reconstruct() -> Callable:
    # numpy 2 renamed numpy.core to numpy._core; importing the old name only warns there.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy has no multiarray._reconstruct")


_RECONSTRUCT = _numpy_reconstruct()


def _empty_array(subtype: object, shape: tuple, typecode: bytes) -> np.ndarray:
    # numpy pickles an array as an empty one whose __setstate__ then sets shape, dtype and
    # data, checking that their sizes agree. The arguments are not needed: ignoring them
    # keeps a crafted file from asking for an array of another type or a huge allocation.
    return _RECONSTRUCT(np.ndarray, (0,), b"b")


def _plain_dtype(*args: object) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays would hold whatever else the pickle builds
        raise pickle.UnpicklingError("refused an array of Python objects")
    return dtype


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    return b""  # how Python 3 writes b"" into a protocol-2 pickle


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): "numpy.ndarray",  # only ever handed to _reconstruct; not callable
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,  # protocol 2 names builtins the Python 2 way
}


# What a damaged or foreign pickle makes the unpickler raise.
PICKLE_FAILURES = (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError,
                   LookupError, AttributeError, ArithmeticError, MemoryError)  # fmt: skip


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; any other global a pickle
    asks for (the way a crafted file would run code) is refused naming the file."""

    def __init__(self, file: BinaryIO, path: Path):
        # latin1 reads Python 2 strings (the CIFAR files') and numpy's raw bytes in them alike.
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise DataError(
                f"{self.path}: refused to load {module}.{name} from this pickle; a CIFAR "
                "file holds only numpy arrays, lists and strings (the file may be crafted)"
            )
        return allowed


def load_array_pickle(path: Path) -> object:
    """The object in a pickle file that may hold only plain data and numpy arrays. The opcodes
    are walked first (pickletools, reading from memory): a length a crafted pickle claims for a
    string (2**40 bytes, say) is refused there, where the unpickler would allocate it up
    front before finding the file shorter."""
    try:
        data = path.read_bytes()
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        return ArrayUnpickler(io.BytesIO(data), path).load()
    except PICKLE_FAILURES as error:
        problem = f"{type(error).__name__}: {error}"
        raise DataError(f"{path}: not a readable pickle ({problem})") from None


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format), plain or gzipped: the magic number
    0 0 8 D, D big-endian uint32 sizes, then the bytes.

    The header is read and checked first; the size it promises is computed with Python's
    integers (no overflow), each image side must be at most MAX_IMAGE_SIDE, and exactly that
    many bytes are read, in chunks, before the file must end. A gzipped file of zeros, or a
    header promising more than the file holds, is refused having read no more than it holds.
    """
    header = 4 + 4 * dimensions
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as file:
            head = file.read(header)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] != dimensions:
                raise DataError(
                    f"{path}: not an IDX file of unsigned bytes with {dimensions} dimension(s) "
                    f"(its magic number is {head[:4].hex() or 'missing'}, expected "
                    f"0000080{dimensions})"
                )
            if len(head) < header:
                raise DataError(f"{path}: its IDX header is cut short ({len(head)} bytes)")
            shape = tuple(
                int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions)
            )
            if any(side > MAX_IMAGE_SIDE for side in shape[1:]):
                raise DataError(
                    f"{path}: its header gives images of {shape[1:]}, beyond {MAX_IMAGE_SIDE} "
                    "pixels a side; the file is damaged or not an image set"
                )
            expected = math.prod(shape)
            data = _read_exactly(file, expected)
            extra = len(file.read(1))
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    if len(data) != expected or extra:
        got = f"{header + len(data)}" + (" or more" if extra else "")
        raise DataError(
            f"{path}: {got} bytes, but its header (sizes {shape}) promises {header + expected}; "
            "the file is truncated or damaged"
        )
    return np.frombuffer(data, np.uint8).reshape(shape)


def _read_exactly(file: BinaryIO, count: int, chunk: int = 1 << 24) -> bytearray:
    """Up to `count` bytes of `file`, read in chunks: memory grows with what the file really
    holds, never with what a header claims."""
    data = bytearray()
    while len(data) < count:
        piece = file.read(min(chunk, count - len(data)))
        if not piece:
            break
        data += piece
    return data


MAT_HEADER = 128  # a MATLAB 5 file's text header, subsystem offset, version and endian mark
MAT_COMPRESSED = 15  # miCOMPRESSED: a zlib stream holding one variable
MAT_EXPANSION = 16  # how many times its stored size a compressed variable may grow (SVHN: 1.3)
MAT_CHUNK = 1 << 22


def check_mat_expansion(path: Path) -> None:
    """Refuse a MATLAB 5 file whose compressed variables expand beyond MAT_EXPANSION times
    their stored size (plus a MiB): a zlib bomb would otherwise fill memory inside scipy. Each
    variable is decompressed as a stream and only counted, in chunks of MAT_CHUNK, stopping as
    soon as the bound is passed; nothing is kept."""
    try:
        with open(path, "rb") as file:
            header = file.read(MAT_HEADER)
            order = "<" if header[126:128] == b"IM" else ">"
            while tag := file.read(8):
                if len(tag) < 8:
                    return  # scipy names a cut-short file itself
                kind, size = struct.unpack(order + "II", tag)
                if kind >> 16:  # a small element: data packed into the tag itself
                    continue
                if kind != MAT_COMPRESSED:
                    file.seek(size + (-size % 8), 1)
                    continue
                limit = MAT_EXPANSION * size + (1 << 20)
                inflater, expanded, left = zlib.decompressobj(), 0, size
                while left > 0 and not inflater.eof:
                    piece = file.read(min(MAT_CHUNK, left))
                    if not piece:
                        return
                    left -= len(piece)
                    while piece and not inflater.eof:
                        expanded += len(inflater.decompress(piece, MAT_CHUNK))
                        piece = inflater.unconsumed_tail
                        if expanded > limit:
                            raise DataError(
                                f"{path}: refused: a compressed variable of {size:,} bytes "
                                f"expands past {limit:,} (a zlib bomb?); SVHN's variables "
                                f"grow less than {MAT_EXPANSION}-fold"
                            )
                file.seek(left, 1)
    except (OSError, zlib.error, struct.error) as error:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({error})") from None
