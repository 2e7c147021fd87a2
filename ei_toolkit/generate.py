"""Sharded sample generation on torch.distributed: :func:`generate` writes ``n`` samples as shards
``DIR/shard-KKKKKK.npz`` (``index``: int64 global sample indices, ``x``: float32 samples) with a manifest of the
configuration (``DIR/manifest.json``); :func:`verify_shards` checks them and :func:`evaluate_shards` computes the
digits Frechet distance over all of them (:mod:`ei_toolkit.metrics`). docs/scale.md explains the design.

Reproducibility: sample i depends only on (seed, i) and the configuration. Its initial noise comes from a CPU
generator of its own, seeded from (seed, i); a stochastic method draws its step noise from a second generator of
its own, seeded from (seed, i, 1), on the sampling device (``generator=[...]`` of :func:`ei_toolkit.solve`, see
:mod:`ei_toolkit.noise`). The model is called on fixed blocks of consecutive samples (the ``block`` of the
configuration), never on a batch-dependent set, so a sample is bitwise the same whatever the batch size and the
number of processes on one kind of hardware. Adaptive black-box methods (``torchdiffeq:dopri5``, ...) choose
their steps from the whole batch and are refused.

Shards: shard k holds indices [k S, min((k + 1) S, n)) for the fixed shard size S, whatever the world size; the
shards still to do are dealt round-robin to the ranks. A shard is written to a temporary file of a random name in the
same directory (``O_EXCL | O_NOFOLLOW``), fsynced and renamed (``os.replace``), so a killed run leaves whole shards
only. A rerun checks every shard (a regular file, a zip of bounded members, the expected indices, shape and dtype read
from each header before its data, finite values, the configuration digest every shard carries) and regenerates the
missing or bad ones; a rerun with a different configuration into the same directory is refused
(:class:`ShardConfigError`) and changes nothing: an existing manifest is never replaced. Rank 0 holds an exclusive
lock on the directory (``fcntl.flock``) for the whole run, so a second run into it is refused
(:class:`ShardLockError`). Shard directories are untrusted input: docs/untrusted_files.md.

Processes: run plainly, one process. Under ``torchrun`` or ``accelerate launch`` (which set ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the process group is initialised from those variables
(NCCL when the device is CUDA, gloo otherwise) unless the caller already did; rank 0 shows a progress bar over the
whole job, fed by one all-reduce of a counter per batch round.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import itertools
import json
import math
import operator
import os
import stat
import struct
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .errors import NumericalError, positive_int
from .files import open_regular, read_json, temp_files, write_new
from .integrators import Integrator, Method, get_integrator
from .model import Model
from .sampling import DEFAULT_MATRIX_METHOD, default_method, describe_defaults, guidance_scale_of, solve
from .sde import LinearSDE, MatrixLinearSDE

FORMAT = "ei_toolkit.generate/1"
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-*.npz"
DEFAULT_BATCH = 256
DEFAULT_BLOCK = 64
DEFAULT_SHARD_SIZE = 1000
LOCK = ".ei_toolkit-generate.lock"
"""The lock file a run holds (``fcntl.flock``, exclusive) from its first check to its last shard; it holds the pid."""
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


def sample_seed(seed: int, i: int, stream: int = 0) -> int:
    """A 64-bit seed for sample i's generator (stream 0: its initial noise, 1: a stochastic method's step noise):
    the first 8 bytes of BLAKE2b over the little-endian (seed, i, stream), so neighbouring samples get unrelated
    seeds and the map is the same on every machine."""
    digest = hashlib.blake2b(struct.pack("<QQQ", seed, i, stream), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def initial_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """N(0, I) starting points of the given samples (float32, CPU): row j from sample indices[j]'s own generator."""
    g = torch.Generator()
    rows = []
    for i in indices:
        g.manual_seed(sample_seed(seed, int(i), 0))
        rows.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(rows)


@dataclass
class GenerateResult:
    """What one :func:`generate` call did (the same on every rank but ``rank`` and ``written``)."""

    out_dir: Path
    n: int
    world_size: int
    rank: int
    generated: int  # samples generated by this run, over all ranks
    reused_shards: int  # shards found complete and kept
    bad_shards: dict[int, str]  # shards found corrupt (and regenerated), with the reason
    written: list[int] = field(default_factory=list)  # shards written by this rank
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else math.nan


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


# ---------------------------------------------------------------------------------------------------- checking

def _check_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, torch.Size | tuple | list) and len(shape) >= 1:
        try:
            return tuple(positive_int("shape", s) for s in shape)
        except ValueError:
            pass
    raise ValueError(f"shape must be a non-empty sequence of positive integers (one sample's shape); got {shape!r}")


def _check_seed(seed: object) -> int:
    try:
        s = operator.index(seed)
    except TypeError:
        s = -1
    if isinstance(seed, bool) or not 0 <= s < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63); got {seed!r}")
    return s


def _model_identity(model: Model, model_id: str | None) -> dict[str, str]:
    """What names the model in the manifest: ``model_id`` if given, else the SHA-256 of an nn.Module's state
    (names, dtypes, shapes and bytes of its parameters and buffers)."""
    if model_id is not None:
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string; got {model_id!r}")
        return {"id": model_id}
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model_id: a model that is not a torch.nn.Module ({type(model).__name__}) cannot be hashed; "
                         f"pass model_id='...' naming it (its weights and version)")
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__qualname__, "sha256": h.hexdigest()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ei_toolkit")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------- files

def _read_manifest(out_dir: Path) -> dict[str, Any]:
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
    _check_layout(manifest["config"], str(path))
    return manifest


def _check_layout(config: dict[str, Any], where: str) -> tuple[int, int, tuple[int, ...]]:
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


def _write_shard(path: Path, index: np.ndarray, x: np.ndarray, digest: str) -> None:
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


def _scan(out_dir: Path, shards: Sequence[int], shard_size: int, n: int, shape: Sequence[int],
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
    config = _read_manifest(out_dir)["config"]
    n, size, shape = _check_layout(config, str(out_dir / MANIFEST))
    shards = range(-(-n // size))
    problems = _scan(out_dir, shards, size, n, shape, config_digest(config))
    return ShardReport(n=n, shard_size=size, valid=[k for k in shards if k not in problems],
                       missing=[k for k, why in problems.items() if why == "missing"],
                       bad={k: why for k, why in problems.items() if why != "missing"})


def iter_shards(out_dir: str | Path):
    """Yield (index, x) of every shard in order, after verifying that all are there and valid."""
    out_dir = Path(out_dir)
    report = verify_shards(out_dir)
    if not report.complete:
        raise ShardError(f"{out_dir}: {report.describe()}; rerun the same generate command to complete it")
    config = _read_manifest(out_dir)["config"]
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
    config = _read_manifest(out_dir)["config"]
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


# ---------------------------------------------------------------------------------------------------- processes

@dataclass
class _Group:
    world: int = 1
    rank: int = 0
    counter_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: Sequence[int]) -> list[int]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.int64, device=self.counter_device)
        dist.all_reduce(t)
        return t.tolist()



def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _join(device: torch.device) -> _Group:
    """The process group: the caller's if initialised, else one from torchrun's / accelerate's environment
    variables when WORLD_SIZE > 1, else a single process."""
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        return _Group(dist.get_world_size(), dist.get_rank(), device if backend == "nccl" else torch.device("cpu"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Group()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    # The group stays for the life of the process (a later call reuses it: re-initialising one after destroying it
    # is unreliable with gloo) and is destroyed at exit.
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    atexit.register(_destroy_group)
    return _Group(dist.get_world_size(), dist.get_rank(), device if device.type == "cuda" else torch.device("cpu"))


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- generate

def generate(
    model: Model,
    sde: LinearSDE | MatrixLinearSDE,
    shape: Sequence[int],
    n: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    batch: int = DEFAULT_BATCH,
    method: str | Method | None = None,
    nfe: int | None = 10,
    grid: str | Sequence[float] | torch.Tensor | None = None,
    lam: float | None = None,
    block: int = DEFAULT_BLOCK,
    shard_size: int = DEFAULT_SHARD_SIZE,
    t_end: float | None = None,
    prediction: str = "eps",
    clip_x0: float | None = None,
    device: str | torch.device | None = None,
    model_id: str | None = None,
    condition: Callable[[torch.Tensor], Any] | None = None,
    condition_id: str | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Generate samples 0..n-1 of ``shape`` into shards of ``out_dir``, on every rank of the process group.

    ``method``, ``nfe``, ``grid``, ``lam``, ``t_end``, ``prediction`` and ``clip_x0`` are those of
    :func:`ei_toolkit.solve` (``lam`` for stochastic methods such as ``"sddim"``). The model is called on blocks of
    ``block`` consecutive samples (block j of shard k: indices k S + j block onwards, the same blocks whatever the
    batch or world size), so that a sample's arithmetic never depends on which other samples share its batch:
    float kernels (MKL, cuBLAS) round a row differently for different batch sizes, and the sampler amplifies that
    from ~1e-6 in eps to ~5e-5 in x at NFE 4. ``batch`` (rounded to whole blocks) is the number of samples each rank
    integrates at once and changes no sample; ``block`` and ``shard_size`` (samples per shard) are part of the
    configuration. ``device``: default CUDA device ``LOCAL_RANK`` when CUDA is available, else the CPU; an nn.Module
    model is moved there (in place). The model is named in the manifest by the SHA-256 of its weights, or by
    ``model_id`` (needed for a model that is not an nn.Module). The configuration is recorded in
    ``out_dir/manifest.json``: a rerun with the same one regenerates only missing or corrupt shards; with another
    one it raises :class:`ShardConfigError` and writes nothing. Before anything is written, sample 0 is computed
    alone (NFE model calls on one row), so that bad arguments fail early. Returns a :class:`GenerateResult`.

    Conditional models: ``condition`` maps the int64 global indices of a block's samples to their condition
    (e.g. class labels), and the model is called ``model(x, t, c)``; ``condition_id`` (required with it) names the
    rule in the manifest, e.g. ``"label = i mod 10"``.
    """
    start = time.perf_counter()
    if not isinstance(sde, LinearSDE | MatrixLinearSDE):
        raise TypeError(f"sde must be an ei_toolkit.LinearSDE or MatrixLinearSDE; got {type(sde).__name__}")
    shape = _check_shape(shape)
    n, batch = positive_int("n", n), positive_int("batch", batch)
    block, shard_size = positive_int("block", block), positive_int("shard_size", shard_size)
    seed = _check_seed(seed)
    try:
        _check_layout({"n": n, "shard_size": shard_size, "shape": list(shape)}, "generate")
    except ManifestError as e:
        raise ValueError(str(e)) from None
    out_dir = Path(out_dir)
    matrix = isinstance(sde, MatrixLinearSDE)
    if method is None and not matrix:  # sample()'s default for this budget, with its grid
        method, default_grid = default_method(nfe, guidance_scale=guidance_scale_of(model), sde=sde)
        grid = default_grid if grid is None else grid
    chosen = get_integrator(method if method is not None else DEFAULT_MATRIX_METHOD)
    chosen = chosen.configure(lam=lam)
    if not isinstance(chosen, Integrator) and getattr(chosen, "evals_per_step", None) is None:
        raise ValueError(f"method {chosen.name!r} is adaptive: it chooses its steps from the whole batch, so a "
                         f"sample would depend on its batch; use a fixed-grid method")
    if isinstance(chosen, Integrator):
        chosen.steps_for_nfe(nfe)
    if grid is not None and not isinstance(grid, str):
        grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
        t_end = None  # an explicit grid gives its own end
    device = _resolve_device(device)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    if (condition is None) != (condition_id is None) or (condition is not None and not callable(condition)):
        raise ValueError("condition and condition_id go together: a callable from sample indices to conditions and "
                         "a string naming it (or neither)")
    if condition_id is not None and (not isinstance(condition_id, str) or not condition_id):
        raise ValueError(f"condition_id must be a non-empty string; got {condition_id!r}")
    job = _Job(model=model, sde=sde, method=chosen, shape=shape, n=n, seed=seed, nfe=nfe, grid=grid, t_end=t_end,
               prediction=prediction, clip_x0=clip_x0, block=block, shard_size=shard_size, device=device,
               condition=condition, condition_id=condition_id)
    job.sample([range(0, 1)])  # sample 0 alone (NFE calls of one row): bad arguments fail here, before any file
    return _run(_join(device), job, out_dir, batch, model_id, progress, start)


@dataclass
class _Job:
    """What fixes the samples (with the model): everything but the batch size and the world size."""

    model: Model
    sde: Any
    method: Method
    shape: tuple[int, ...]
    n: int
    seed: int
    nfe: int | None
    grid: str | torch.Tensor | None
    t_end: float | None
    prediction: str
    clip_x0: float | None
    block: int
    shard_size: int
    device: torch.device
    condition: Callable[[torch.Tensor], Any] | None = None
    condition_id: str | None = None

    def config(self, model_id: str | None) -> dict[str, Any]:
        m = self.method
        grid = self.grid.tolist() if isinstance(self.grid, torch.Tensor) else self.grid
        config = {
            "n": self.n, "shape": list(self.shape), "seed": self.seed, "shard_size": self.shard_size,
            "block": self.block, "dtype": "float32",
            "method": m.name, "method_key": hashlib.sha256(repr(m.key).encode()).hexdigest(),
            "lam": getattr(m, "lam", None), "eta": getattr(m, "eta", None), "nfe": self.nfe,
            "grid": grid or f"default ({m.default_grid})", "t_end": self.t_end, "prediction": self.prediction,
            "clip_x0": self.clip_x0, "sde": repr(self.sde),
            "sde_key": hashlib.sha256(repr(self.sde.key).encode()).hexdigest(),
            "model": _model_identity(self.model, model_id), "condition": self.condition_id,
            "noise": "sample i: CPU generator seeded by blake2b(seed, i, 0); step noise: blake2b(seed, i, 1)",
            "step_noise_device": self.device.type if m.stochastic else None,
            "ei_toolkit": _version(),
        }
        return json.loads(json.dumps(config))  # as it reads back from the manifest

    def blocks(self, shards: Sequence[int]) -> list[range]:
        """The model-call blocks of the given shards, in order."""
        out = []
        for k in shards:
            rows = shard_indices(k, self.shard_size, self.n)
            out += [range(a, min(a + self.block, rows.stop)) for a in range(rows.start, rows.stop, self.block)]
        return out

    def batches(self, shards: Sequence[int], batch: int) -> list[list[range]]:
        """The blocks of ``shards`` grouped into batches of at most ``batch`` samples (at least one block)."""
        out: list[list[range]] = []
        size = 0
        for b in self.blocks(shards):
            if out and size + len(b) <= batch:
                out[-1].append(b)
                size += len(b)
            else:
                out.append([b])
                size = len(b)
        return out

    def sample(self, blocks: list[range]) -> np.ndarray:
        """Samples of the given blocks (float32, CPU), the model called block by block."""
        indices = [i for b in blocks for i in b]
        x = initial_noise(self.seed, indices, self.shape).to(self.device)
        generators = None
        if self.method.stochastic:
            generators = [torch.Generator(device=self.device).manual_seed(sample_seed(self.seed, i, 1))
                          for i in indices]
        spans = list(itertools.pairwise(np.cumsum([0] + [len(b) for b in blocks]).tolist()))
        model = self.model
        conds: list[Any] = [None] * len(blocks)
        if self.condition is not None:
            conds = [self.condition(torch.tensor(list(b), dtype=torch.int64)) for b in blocks]
            conds = [c.to(self.device) if isinstance(c, torch.Tensor) else c for c in conds]

        def call(x: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
            return model(x, t) if c is None else model(x, t, c)

        def blockwise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if len(spans) == 1:
                return call(x, t, conds[0])
            per_row = t.ndim == 1 and t.shape[0] == x.shape[0]
            return torch.cat([call(x[a:b], t[a:b] if per_row else t, c)
                              for (a, b), c in zip(spans, conds, strict=True)])

        with torch.no_grad():
            out = solve(blockwise, x, self.sde, method=self.method, nfe=self.nfe, grid=self.grid, t_end=self.t_end,
                        prediction=self.prediction, clip_x0=self.clip_x0, generator=generators).x
        out = out.float().cpu().numpy()
        if not np.isfinite(out).all():
            raise NumericalError(f"samples {indices[0]}..{indices[-1]} are not finite")
        return out


class _Lock:
    """An exclusive ``fcntl.flock`` on ``out_dir/LOCK`` (created if missing, never removed), holding the owner's pid
    for the message a second run gets. The kernel drops the lock when its process dies: a killed run leaves no
    stale lock."""

    def __init__(self, out_dir: Path) -> None:
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking (docs/untrusted_files.md)
            return
        path = out_dir / LOCK
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise ShardConfigError(f"{path}: cannot open the lock file ({e.strerror or e}); is it a link?") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ShardConfigError(f"{path} is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise ShardLockError(f"{out_dir}: another generate run (pid {owner}) is writing into this directory; "
                                     "nothing was changed: wait for it to finish, or write to another directory"
                                     ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _prepare(out_dir: Path, config: dict[str, Any], group: _Group, batch: int) -> None:
    """Rank 0, holding the lock: check the manifest against ``config`` (or write it; an existing manifest is never
    replaced), remove temporary files of killed runs."""
    path = out_dir / MANIFEST
    has_shards = any(out_dir.glob(SHARD_PATTERN))
    if os.path.lexists(path):
        try:
            old = _read_manifest(out_dir)["config"]
        except ManifestError as e:
            raise ShardConfigError(f"{e}; nothing was changed: write to another directory, or delete it") from None
        if old != config:
            diff = [f"{k}: {old.get(k)!r} there, {config.get(k)!r} now" for k in sorted(set(old) | set(config))
                    if old.get(k) != config.get(k)]
            what = "samples" if has_shards else "the manifest (no shards yet)"
            raise ShardConfigError(f"{out_dir} holds {what} of another configuration ({'; '.join(diff)}); nothing was "
                                   f"changed: write to another directory, or delete this one")
        config = None  # the same configuration: keep the manifest as it is
    elif has_shards:
        raise ShardConfigError(f"{out_dir} holds shards but no {MANIFEST}: their configuration is unknown; nothing "
                               f"was changed: write to another directory")
    # temporary files of killed runs (this run holds the lock: no live run is writing them)
    stale = [*temp_files(out_dir, "shard-*.npz"), *temp_files(out_dir, MANIFEST),
             *out_dir.glob(".shard-*.npz.tmp-*"), *out_dir.glob(f".{MANIFEST}.tmp-*")]  # the last two: older names
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            if not p.is_dir() or p.is_symlink():
                p.unlink()
    if config is not None:
        manifest = {"format": FORMAT, "config": config,
                    "created": {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "world_size": group.world,
                                "batch": batch, "torch": torch.__version__}}
        if not write_new(path, lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()), replace=False):
            raise ShardConfigError(f"{path} appeared while this run prepared it (a run of an older version without "
                                   "the lock?); nothing was changed: rerun")


def _run(group: _Group, job: _Job, out_dir: Path, batch: int, model_id: str | None, progress: bool,
         start: float) -> GenerateResult:
    # 1. rank 0 takes the directory's lock for the whole run and checks or writes the manifest; every rank learns
    # the outcome (and raises the same error) and the configuration digest its shards carry
    status: tuple[str, str] = ("ok", "")
    digest = ""
    lock: _Lock | None = None
    try:
        if group.rank == 0:
            try:
                config = job.config(model_id)  # a bad model_id fails here, before the directory is created
                digest = config_digest(config)
                out_dir.mkdir(parents=True, exist_ok=True)
                lock = _Lock(out_dir)
                _prepare(out_dir, config, group, batch)
            except ShardLockError as e:
                status = ("lock", str(e))
            except ShardConfigError as e:
                status = ("config", str(e))
            except Exception as e:
                if group.world == 1:
                    raise
                status = ("error", f"{type(e).__name__}: {e}")
        status, digest = group.broadcast((status, digest))
        if status[0] in ("config", "lock"):
            raise (ShardLockError if status[0] == "lock" else ShardConfigError)(status[1])
        if status[0] == "error":
            raise RuntimeError(f"generate: rank 0 could not prepare {out_dir}: {status[1]}")
        return _work(group, job, out_dir, batch, progress, start, digest)
    finally:
        if lock is not None:
            lock.release()


def _work(group: _Group, job: _Job, out_dir: Path, batch: int, progress: bool, start: float,
          digest: str) -> GenerateResult:
    # 2. every rank checks its share of the existing shards; the missing or bad ones are dealt round-robin
    n, size = job.n, job.shard_size
    n_shards = math.ceil(n / size)
    out_dir.mkdir(parents=True, exist_ok=True)  # on other nodes, where the directory may be local
    found = _scan(out_dir, range(group.rank, n_shards, group.world), size, n, job.shape, digest)
    todo_map: dict[int, str] = {}
    for part in group.all_gather(found):
        todo_map.update(part)
    todo = sorted(todo_map)
    bad = {k: why for k, why in todo_map.items() if why != "missing"}
    if bad and group.rank == 0:
        warnings.warn(f"{out_dir}: regenerating {len(bad)} bad shard(s): "
                      + "; ".join(f"{shard_name(k)} ({why})" for k, why in sorted(bad.items())[:5]),
                      RuntimeWarning, stacklevel=3)
    plans = [job.batches(todo[r::group.world], batch) for r in range(group.world)]
    mine = plans[group.rank]
    to_generate = sum(len(shard_indices(k, size, n)) for k in todo)

    # 3. rounds of one batch per rank (or none, for a rank that is done) and one all-reduce of the counters
    bar = None
    if progress and group.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - to_generate, unit="sample", desc=f"generate ({group.world} proc)")
    pending: dict[int, list[np.ndarray]] = {}
    written: list[int] = []
    failure: BaseException | None = None
    generated = 0
    try:
        for r in range(max(len(p) for p in plans)):
            done = 0
            if failure is None and r < len(mine):
                try:
                    out = job.sample(mine[r])
                    written += _collect(out_dir, pending, [i for b in mine[r] for i in b], out, size, n, digest)
                    done = len(out)
                except Exception as e:
                    failure = e
            done_all, failed = group.sum([done, failure is not None])
            generated += done_all
            if bar is not None:
                bar.update(done_all)
            if failed:
                break
    finally:
        if bar is not None:
            bar.close()
    if failure is not None:
        raise failure
    if generated != to_generate:
        raise RuntimeError(f"generate: another rank failed (see its error); the {len(written)} shard(s) this rank "
                           f"wrote are kept: rerun the same command to resume")
    return GenerateResult(out_dir=out_dir, n=n, world_size=group.world, rank=group.rank, generated=generated,
                          reused_shards=n_shards - len(todo), bad_shards=bad, written=written,
                          seconds=time.perf_counter() - start)


def _collect(out_dir: Path, pending: dict[int, list[np.ndarray]], indices: list[int], out: np.ndarray,
             shard_size: int, n: int, digest: str) -> list[int]:
    """File the batch's samples under their shards; write each shard that is now whole. Returns those written."""
    written = []
    ids = np.asarray(indices, dtype=np.int64)
    for k in np.unique(ids // shard_size).tolist():
        sel = ids // shard_size == k
        pending.setdefault(k, []).append(out[sel])
        rows = shard_indices(k, shard_size, n)
        if sum(len(p) for p in pending[k]) == len(rows):
            x = np.concatenate(pending.pop(k)).astype(np.float32, copy=False)
            _write_shard(out_dir / shard_name(k), np.arange(rows.start, rows.stop, dtype=np.int64), x, digest)
            written.append(k)
    return written


# ---------------------------------------------------------------------------------------------------- command line

def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``generate`` and ``evaluate`` on the ``ei-toolkit`` command line."""
    g = sub.add_parser("generate", help="sharded sample generation from the shipped digits model (torchrun-ready)",
                       description="Generate N digits into shards DIR/shard-*.npz with a manifest; under torchrun "
                                   "--nproc_per_node=P -m ei_toolkit generate ... each rank does its share. A rerun "
                                   "resumes; a different configuration into the same DIR is refused.")
    g.add_argument("-n", "--n", type=int, required=True, dest="n",
                   help="number of samples (under torchrun write -n N: torchrun reads --n as one of its options)")
    g.add_argument("--out", required=True, help="output directory (created if missing)")
    g.add_argument("--seed", type=int, default=0, help="sample i depends on (seed, i) only (default: 0)")
    g.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"samples each process integrates at once, in whole blocks; changes no sample "
                        f"(default: {DEFAULT_BATCH})")
    g.add_argument("--method", default=None, help="integrator, e.g. tab3 or sddim (default: sample()'s for --nfe: "
                   f"{describe_defaults()})")
    g.add_argument("--nfe", type=int, default=10, help="number of model evaluations (default: 10)")
    g.add_argument("--grid", default=None, help="time grid (default: the method's recommended grid)")
    g.add_argument("--lam", type=float, default=None,
                   help="noise level lambda >= 0 of --method sddim (default: sddim's, 1)")
    g.add_argument("--block", type=int, default=DEFAULT_BLOCK,
                   help=f"samples per model call, part of the configuration (default: {DEFAULT_BLOCK})")
    g.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"samples per shard, part of the configuration (default: {DEFAULT_SHARD_SIZE})")
    g.add_argument("--guidance", type=float, default=None,
                   help="use the class-conditional digits model, sample i of class i mod 10, with classifier-free "
                        "guidance at this scale (1: purely conditional) (default: the unconditional model)")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA is available, else cpu")
    g.add_argument("--evaluate", action="store_true",
                   help="afterwards, the digits Frechet distance over all shards (default: off)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on rank 0 (default: shown)")
    g.set_defaults(func=generate_command)
    e = sub.add_parser("evaluate", help="verify the shards of a generate directory and compute the digits FD")
    e.add_argument("out", help="the directory generate wrote")
    e.set_defaults(func=evaluate_command)


def generate_command(args: argparse.Namespace) -> int:
    from .models.digits import load_digits_model
    from .sde import DiscreteVP

    sde = DiscreteVP.linear()
    device = _resolve_device(args.device)
    model, extra = load_digits_model(device), {}
    if args.guidance is not None:
        model, extra = _guided_digits(device, args.guidance)
    try:
        result = generate(model, sde, (1, 8, 8), args.n, args.out, seed=args.seed,
                          batch=args.batch, method=args.method, nfe=args.nfe, grid=args.grid, lam=args.lam,
                          block=args.block, shard_size=args.shard_size, t_end=sde.t0, device=device,
                          progress=not args.no_progress, **extra)
    except (ShardConfigError, ValueError, TypeError) as err:
        raise SystemExit(f"ei-toolkit generate: {err}") from None
    if result.rank != 0:
        return 0
    print(f"{result.generated} samples generated by {result.world_size} process(es) in {result.seconds:.2f} s "
          f"({result.samples_per_second:.1f} samples/s); {result.reused_shards} shard(s) kept"
          + (f", {len(result.bad_shards)} bad shard(s) regenerated" if result.bad_shards else "")
          + f" -> {result.out_dir}")
    if args.evaluate:
        return evaluate_command(argparse.Namespace(out=args.out))
    return 0


def _guided_digits(device: torch.device, scale: float) -> tuple[Model, dict[str, Any]]:
    """The shipped class-conditional digits model with classifier-free guidance (Ho & Salimans 2022) at ``scale``
    as ``model(x, t, labels)``, and the generate() arguments that name it and give sample i the label i mod 10."""
    from .diffusion.guidance import classifier_free_guidance
    from .models.digits_cond import NULL_LABEL, NUM_CLASSES, digits_cond_model

    if not math.isfinite(scale):
        raise SystemExit(f"ei-toolkit generate: --guidance must be a finite number; got {scale}")
    cond = digits_cond_model(device)

    def guided(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classifier_free_guidance(cond, labels, torch.full_like(labels, NULL_LABEL), scale)(x, t)

    guided.guidance_scale = scale  # type: ignore[attr-defined]  # sample()'s default under guidance reads it
    weights = _model_identity(cond, None)["sha256"]
    return guided, {"model_id": f"DigitsCondEps sha256 {weights}, classifier-free guidance scale {scale:g}",
                    "condition": lambda i: i % NUM_CLASSES, "condition_id": f"label = i mod {NUM_CLASSES}"}


def evaluate_command(args: argparse.Namespace) -> int:
    try:
        result = evaluate_shards(args.out)
    except (ShardError, ValueError) as err:
        raise SystemExit(f"ei-toolkit evaluate: {err}") from None
    print(f"FD {result['fd']:.3f} over {result['n']} samples in {result['shards']} shards (against the "
          f"{result['reference']})")
    return 0
