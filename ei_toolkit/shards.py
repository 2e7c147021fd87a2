"""Shard storage of :func:`ei_toolkit.generate`: an output directory holds ``manifest.json`` (the configuration)
and shards ``shard-KKKKKK.npz`` (``index``: int64 global sample indices, ``x``: float32 samples, ``config``: the
configuration digest). This module names, writes, reads, checks and evaluates them; :mod:`ei_toolkit.generate` runs
the distributed job that fills them. docs/scale.md explains the design.

Shard k holds indices [k S, min((k + 1) S, n)) for the fixed shard size S. A shard is written to a temporary file of a
random name in the same directory (``O_EXCL | O_NOFOLLOW``), fsynced and renamed (``os.replace``), so a killed run
leaves whole shards only. Every read treats the directory as untrusted input (docs/untrusted_files.md): a regular
file, a zip of bounded members, the expected indices, shape and dtype read from each header before its data, finite
values, the configuration digest every shard carries.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import open_regular, read_json, write_new

FORMAT = "ei_toolkit.generate/1"
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-*.npz"
MAX_SHARDS = 1_000_000
"""A manifest (or a generate call) may declare at most this many shards."""
MAX_SAMPLE_ELEMENTS = 1 << 26
"""At most this many elements per sample (the product of ``shape``)."""
MAX_SHARD_BYTES = 1 << 32
"""At most this many bytes of float32 samples per shard (4 GiB): what reading one shard may allocate."""
MANIFEST_MAX_BYTES = 1 << 20
"""A manifest larger than this (1 MiB) is refused before it is read."""
_NPY_SLACK = 1 << 16  # bytes a member may hold beyond its array's data (the .npy header)


class ShardConfigError(ValueError):
    """The output directory holds samples of another configuration (or shards without a manifest), or another run
    is writing into it."""


class ShardLockError(ShardConfigError):
    """Another ``generate`` run holds the output directory's lock."""


class ShardError(RuntimeError):
    """Shards are missing or corrupt where a complete set is needed (evaluation, loading)."""


class ManifestError(ShardError, ValueError):
    """The manifest is missing, unreadable or not a valid ei_toolkit.generate manifest (names the file)."""


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.npz"


def shard_indices(k: int, shard_size: int, n: int) -> range:
    """Global sample indices of shard k."""
    return range(k * shard_size, min((k + 1) * shard_size, n))


@dataclass
class ShardReport:
    """The state of an output directory: which shards are valid, missing or bad (with the reason)."""

    n: int
    shard_size: int
    valid: list[int]
    missing: list[int]
    bad: dict[int, str]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.bad

    def describe(self) -> str:
        total = len(self.valid) + len(self.missing) + len(self.bad)
        text = f"{len(self.valid)} of {total} shards valid"
        if self.missing:
            text += f"; missing: {_ids(self.missing)}"
        if self.bad:
            text += "; bad: " + "; ".join(f"{shard_name(k)} ({why})" for k, why in sorted(self.bad.items())[:5])
            if len(self.bad) > 5:
                text += f"; and {len(self.bad) - 5} more"
        return text


def _ids(ks: Sequence[int]) -> str:
    shown = ", ".join(str(k) for k in ks[:10])
    return shown + (f", ... ({len(ks)} in all)" if len(ks) > 10 else "")



# ---------------------------------------------------------------------------------------------------- files

def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST
    try:
        manifest = read_json(path, "manifest", max_bytes=MANIFEST_MAX_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: {out_dir} holds no generated samples") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("config"),
                                                                                            dict):
        raise ManifestError(f"{path} is not a manifest of ei_toolkit.generate (format {FORMAT!r} with a config)")
    check_layout(manifest["config"], str(path))
    return manifest


def check_layout(config: dict[str, Any], where: str) -> tuple[int, int, tuple[int, ...]]:
    """(n, shard_size, shape) of a configuration, checked: positive integers, at most :data:`MAX_SHARDS` shards,
    :data:`MAX_SAMPLE_ELEMENTS` per sample and :data:`MAX_SHARD_BYTES` per shard; a ManifestError otherwise."""
    n, size, shape = config.get("n"), config.get("shard_size"), config.get("shape")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not is_int(n) or not is_int(size):
        raise ManifestError(f"{where}: n and shard_size must be positive integers; got n={n!r}, shard_size={size!r}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(is_int(v) for v in shape):
        raise ManifestError(f"{where}: shape must be a list of 1 to 8 positive integers; got {shape!r}")
    elements = math.prod(shape)
    shards = -(-n // size)
    if shards > MAX_SHARDS:
        raise ManifestError(f"{where}: n={n} in shards of {size} makes {shards} shards, more than {MAX_SHARDS}; use "
                            "larger shards")
    if elements > MAX_SAMPLE_ELEMENTS or min(size, n) * elements * 4 > MAX_SHARD_BYTES:
        raise ManifestError(f"{where}: shards of {min(size, n)} samples of shape {tuple(shape)} exceed "
                            f"{MAX_SHARD_BYTES} bytes (or a sample {MAX_SAMPLE_ELEMENTS} elements); use smaller shards")
    return n, size, tuple(shape)


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a configuration (canonical JSON): written into every shard and checked when it is read, so a
    shard of another run, model or configuration is never kept as valid."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_shard(path: Path, index: np.ndarray, x: np.ndarray, digest: str) -> None:
    write_new(path, lambda f: np.savez(f, index=index, x=x, config=np.array(digest, dtype="<U64")))


class _BadShard(Exception):
    pass


def _member(z: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Array ``name`` of a shard: its declared size, .npy header, dtype and shape checked before its data is read."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise _BadShard(f"no array {name[:-4]!r}") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size > nbytes + _NPY_SLACK:
        raise _BadShard(f"{name} declares {info.file_size} bytes, expected {nbytes} of data (+ its header)")
    with z.open(info) as m:
        try:
            version = np.lib.format.read_magic(m)
            read = np.lib.format.read_array_header_2_0 if version == (2, 0) else np.lib.format.read_array_header_1_0
            got_shape, fortran, got_dtype = read(m, max_header_size=_NPY_SLACK)
        except (ValueError, SyntaxError, TypeError) as e:
            raise _BadShard(f"{name} is not a .npy array ({e})") from None
        if got_dtype != dtype or tuple(got_shape) != shape or (fortran and len(shape) > 1):
            raise _BadShard(f"{name[:-4]} is {got_dtype} {tuple(got_shape)}, expected {dtype} {shape}")
        data = m.read(nbytes)
        if len(data) != nbytes or m.read(1):  # reading to the end checks the CRC
            raise _BadShard(f"{name} holds {len(data)} bytes of data, expected {nbytes}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _read_shard(path: Path, expected: range, shape: Sequence[int], digest: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(index, x) of the shard at ``path``, read as untrusted input (a regular file, bounded sizes; see
    :func:`check_shard`); _BadShard with the reason, FileNotFoundError if missing."""
    rows = len(expected)
    xshape = (rows, *map(int, shape))
    limit = rows * 8 + math.prod(xshape) * 4 + 4 * _NPY_SLACK
    try:
        f = open_regular(path, "shard", max_bytes=limit)
    except ValueError as e:
        raise _BadShard(str(e).replace(f"shard {str(path)!r} ", "")) from None
    with f:
        try:
            with zipfile.ZipFile(f) as z:
                names = sorted(z.namelist())
                wanted = ["index.npy", "x.npy"] + (["config.npy"] if digest is not None else [])
                if len(names) > 3 or not set(wanted) <= set(names) or not set(names) <= {"index.npy", "x.npy",
                                                                                          "config.npy"}:
                    raise _BadShard(f"holds {names[:5]}, expected {sorted(wanted)}")
                if digest is not None:
                    got = _member(z, "config.npy", np.dtype("<U64"), ())
                    if str(got) != digest:
                        raise _BadShard("written by another configuration (its configuration digest differs from "
                                        "the manifest's)")
                index = _member(z, "index.npy", np.dtype("<i8"), (rows,))
                x = _member(z, "x.npy", np.dtype("<f4"), xshape)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise _BadShard(f"unreadable: {type(e).__name__}: {e}") from None
    if not np.array_equal(index, np.arange(expected.start, expected.stop, dtype=np.int64)):
        raise _BadShard(f"index is not {expected.start}..{expected.stop - 1} (int64)")
    if not np.isfinite(x).all():
        raise _BadShard("x holds NaN or inf")
    return index, x


def check_shard(path: Path, expected: range, shape: Sequence[int], config_digest: str | None = None) -> str | None:
    """Why the shard at ``path`` is not valid (``None`` if it is): missing; not a regular file (a link, a FIFO) or
    larger than its arrays need; not a zip (npz) of exactly ``index``, ``x`` (and ``config`` when
    ``config_digest`` is given); a member declaring more bytes than its array needs; another dtype or shape in an
    array's header (checked before its data is read); a bad CRC; other indices than ``expected``; NaN or inf; a
    configuration digest other than ``config_digest``."""
    try:
        _read_shard(Path(path), expected, shape, config_digest)
    except FileNotFoundError:
        return "missing"
    except _BadShard as e:
        return str(e)
    return None


def scan_shards(out_dir: Path, shards: Sequence[int], shard_size: int, n: int, shape: Sequence[int],
          digest: str | None) -> dict[int, str]:
    """{shard: reason} for those of ``shards`` that are missing or bad (one directory listing finds the missing)."""
    try:
        present = {e.name for e in os.scandir(out_dir)}
    except FileNotFoundError:
        present = set()
    todo = {}
    for k in shards:
        name = shard_name(k)
        why = "missing" if name not in present else check_shard(out_dir / name, shard_indices(k, shard_size, n),
                                                                shape, digest)
        if why is not None:
            todo[k] = why
    return todo


def verify_shards(out_dir: str | Path) -> ShardReport:
    """Check every shard the manifest of ``out_dir`` promises (see :func:`check_shard`), against the manifest's
    configuration digest. A manifest that is not valid (types, positive integers, at most :data:`MAX_SHARDS`
    shards of at most :data:`MAX_SHARD_BYTES`) raises :class:`ManifestError` (a ValueError naming it)."""
    out_dir = Path(out_dir)
    config = read_manifest(out_dir)["config"]
    n, size, shape = check_layout(config, str(out_dir / MANIFEST))
    shards = range(-(-n // size))
    problems = scan_shards(out_dir, shards, size, n, shape, config_digest(config))
    return ShardReport(n=n, shard_size=size, valid=[k for k in shards if k not in problems],
                       missing=[k for k, why in problems.items() if why == "missing"],
                       bad={k: why for k, why in problems.items() if why != "missing"})


def iter_shards(out_dir: str | Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (index, x) of every shard in order, after verifying that all are there and valid."""
    out_dir = Path(out_dir)
    report = verify_shards(out_dir)
    if not report.complete:
        raise ShardError(f"{out_dir}: {report.describe()}; rerun the same generate command to complete it")
    config = read_manifest(out_dir)["config"]
    shape, digest = tuple(config["shape"]), config_digest(config)
    for k in report.valid:
        try:
            yield _read_shard(out_dir / shard_name(k), shard_indices(k, report.shard_size, report.n), shape, digest)
        except (FileNotFoundError, _BadShard) as e:
            raise ShardError(f"{out_dir / shard_name(k)} changed while it was read ({e or 'missing'})") from None


def load_shards(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All samples of ``out_dir`` as (index (n,), x (n, *shape)), in index order."""
    parts = list(iter_shards(out_dir))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def evaluate_shards(out_dir: str | Path, *, features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Frechet distance of all samples in ``out_dir`` against a reference, reduced shard by shard.

    By default the digits metric of ``benchmarks/results/digits.md``: the shipped digits classifier's features
    against the held-out digits (samples must be (1, 8, 8)); otherwise ``features`` maps a (B, *shape) float32
    tensor to (B, D) features and ``reference`` is the (mean, covariance) to compare with. Returns ``fd``, ``n``,
    ``shards`` and the ``reference`` used.
    """
    from .metrics import FeatureStatistics, digits_features, digits_reference, frechet_distance

    out_dir = Path(out_dir)
    if (features is None) != (reference is None):
        raise ValueError("features and reference go together: give both, or neither for the digits metric")
    config = read_manifest(out_dir)["config"]
    name = "custom"
    if features is None:
        if tuple(config["shape"]) != (1, 8, 8):
            raise ValueError(f"the digits metric needs (1, 8, 8) samples; {out_dir} holds {tuple(config['shape'])}: "
                             f"pass features= and reference=")
        from .models.classifier import load_digits_classifier

        net = load_digits_classifier()
        features, reference = (lambda x: digits_features(x, net)), digits_reference()
        name = "held-out digits (360) in the shipped digits classifier's features"
    stats: FeatureStatistics | None = None
    shards = 0
    for _, x in iter_shards(out_dir):
        f = features(torch.from_numpy(x))
        stats = stats or FeatureStatistics(dim=int(f.shape[1]))
        stats.update(f)
        shards += 1
    if stats is None or stats.n < 2:
        raise ShardError(f"{out_dir}: a Frechet distance needs at least 2 samples")
    fd = frechet_distance((stats.mean, stats.covariance()), reference)
    return {"fd": fd, "n": stats.n, "shards": shards, "reference": name}
