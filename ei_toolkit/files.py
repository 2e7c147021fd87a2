"""Reading files that may come from elsewhere (a downloaded pipeline folder, a shared output directory), and
writing files into directories that others can write to (docs/untrusted_files.md).

* :func:`open_regular` opens a regular file only: never through a symbolic link as the last component
  (``O_NOFOLLOW``), never a FIFO, device or directory (``O_NONBLOCK`` so a FIFO cannot block the open, then
  ``fstat``), and never more than a stated number of bytes;
* :func:`read_json` parses a small JSON document from such a file, every failure a ValueError naming the file;
* :func:`check_tensor` checks a tensor read from a file before any operation on it: dtype, a shape within bounds,
  contiguous and owning exactly its storage's elements (a stride-0 view of one element cannot claim 10**9);
* :func:`write_new` writes a file through a temporary file of a random name created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the target directory (:func:`tempfile.mkstemp`), so a link planted under a
  predictable name is never written through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

TEMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<target name>.<random>.tmp`` next to their target."""


def open_regular(path: str | os.PathLike, what: str, *, max_bytes: int) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file of at most ``max_bytes`` bytes; a ValueError
    naming ``what`` and the file otherwise (FileNotFoundError passes through: a missing file is not a bad one)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if os.path.islink(path):
            raise ValueError(f"{what} {os.fspath(path)!r} is a symbolic link; only regular files are read (pass the "
                             f"file it points to)") from None
        raise ValueError(f"{what} {os.fspath(path)!r} cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {os.fspath(path)!r} is not a regular file (a FIFO, device or directory); only "
                             "regular files are read")
        if st.st_size > max_bytes:
            raise ValueError(f"{what} {os.fspath(path)!r} holds {st.st_size} bytes, more than the {max_bytes} such a "
                             "file may hold")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, what: str, *, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` bytes (:func:`open_regular`)."""
    with open_regular(path, what, max_bytes=max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the check
        raise ValueError(f"{what} {os.fspath(path)!r} holds more than the {max_bytes} bytes such a file may hold")
    return data


def read_json(path: str | os.PathLike, what: str, *, max_bytes: int = 1 << 20) -> Any:
    """The JSON document in ``path`` (UTF-8, at most ``max_bytes``); a ValueError naming the file for every failure
    (unreadable, not UTF-8, invalid JSON, nested too deeply, numbers out of range)."""
    data = read_bytes(path, what, max_bytes=max_bytes)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError, OverflowError, UnicodeDecodeError, TypeError) as e:
        raise ValueError(f"{what} {os.fspath(path)!r} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_tensor(t: Any, name: str, where: str, *, dtype: torch.dtype, ndim: Sequence[int] | int,
                 max_numel: int) -> torch.Tensor:
    """``t`` if it is a CPU tensor of ``dtype`` with ``ndim`` dimensions, at most ``max_numel`` elements, contiguous,
    at offset 0 of a storage of exactly its elements; a ValueError naming ``name`` and ``where`` otherwise. Reads
    only metadata: nothing is allocated or computed before these checks pass."""
    if not isinstance(t, torch.Tensor) or type(t) is not torch.Tensor:
        raise ValueError(f"{where}: {name} must be a tensor; got {type(t).__name__}")
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if t.layout != torch.strided or t.device.type != "cpu" or t.dtype != dtype or t.ndim not in dims:
        want = str(dims[0]) if len(dims) == 1 else f"{min(dims)} to {max(dims)}"
        raise ValueError(f"{where}: {name} must be a dense CPU {dtype} tensor with {want} dimension(s); got a "
                         f"{t.layout} {t.device.type} {t.dtype} tensor with {t.ndim}")
    if any(s < 0 for s in t.shape) or t.numel() > max_numel:
        raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, more than the {max_numel} elements allowed")
    storage = t.untyped_storage()
    if (t.storage_offset() != 0 or not t.is_contiguous()
            or storage.nbytes() != t.numel() * t.element_size()):
        raise ValueError(f"{where}: {name} is a view (shape {tuple(t.shape)}, strides {t.stride()}, offset "
                         f"{t.storage_offset()}, storage {storage.nbytes()} bytes), not a tensor owning exactly its "
                         "elements")
    return t


def write_new(path: Path, write: Callable[[BinaryIO], None], *, replace: bool = True) -> bool:
    """Write ``path`` through ``write(file)`` into a temporary file of a random name in the same directory
    (``O_EXCL | O_NOFOLLOW``, :func:`tempfile.mkstemp`), fsync it and move it into place: with ``replace`` over
    any existing file (``os.replace``), otherwise only if ``path`` does not exist yet (``os.link``, atomic). Returns
    whether ``path`` now holds what was written (False: ``replace=False`` and it existed). The temporary file is
    removed on every path out; the directory is fsynced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    placed = True
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                placed = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # not every platform can open a directory
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return placed


def temp_files(directory: Path, target_glob: str) -> list[Path]:
    """Temporary files :func:`write_new` leaves when killed, for targets matching ``target_glob``."""
    return sorted(directory.glob(f".{target_glob}.*{TEMP_SUFFIX}"))


def model_id(model: Any) -> str:
    """An identifier of a model, recorded in what was made for it (a calibrated grid, model statistics): a string is
    taken as given; a ``torch.nn.Module`` is identified by its class and the SHA-256 of its parameters and buffers (by
    value: a retrained model gets another id); any other callable by its module and qualified name only (pass a
    string id for plain functions whose behaviour depends on captured data)."""
    if isinstance(model, str):
        if not model:
            raise ValueError("a model id must be a non-empty string")
        return model
    if isinstance(model, torch.nn.Module):
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        return f"module:{type(model).__module__}.{type(model).__qualname__}:{h.hexdigest()[:32]}"
    if callable(model):
        return f"callable:{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', type(model).__name__)}"
    raise TypeError(f"model must be a callable model or a string id; got {type(model).__name__}")
