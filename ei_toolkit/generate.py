"""Sharded sample generation on torch.distributed: :func:`generate` writes ``n`` samples as shards
``DIR/shard-KKKKKK.npz`` (``index``: int64 global sample indices, ``x``: float32 samples) with a manifest of the
configuration (``DIR/manifest.json``). This module is the distributed job (the process group, the directory's
lock, the deal of shards to ranks); the files themselves are :mod:`ei_toolkit.shards`, where
:func:`~ei_toolkit.shards.verify_shards` checks them and :func:`~ei_toolkit.shards.evaluate_shards` computes the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .errors import NumericalError, positive_int
from .files import temp_files, write_new
from .integrators import Integrator, Method, get_integrator
from .model import Model
from .sampling import DEFAULT_MATRIX_METHOD, default_method, guidance_scale_of, solve
from .sde import LinearSDE, MatrixLinearSDE
from .shards import (
    FORMAT,
    MANIFEST,
    SHARD_PATTERN,
    ManifestError,
    ShardConfigError,
    ShardError,
    ShardLockError,
    ShardReport,
    check_layout,
    check_shard,
    config_digest,
    evaluate_shards,
    iter_shards,
    load_shards,
    read_manifest,
    scan_shards,
    shard_indices,
    shard_name,
    verify_shards,
    write_shard,
)

__all__ = [  # the storage names are re-exported: ``from ei_toolkit.generate import verify_shards`` keeps working
    "DEFAULT_BATCH", "DEFAULT_BLOCK", "DEFAULT_SHARD_SIZE", "LOCK", "GenerateResult", "ManifestError",
    "ShardConfigError", "ShardError", "ShardLockError", "ShardReport", "check_shard", "config_digest",
    "evaluate_shards", "generate", "initial_noise", "iter_shards", "load_shards", "model_identity", "resolve_device",
    "sample_seed", "shard_indices", "shard_name", "verify_shards",
]

DEFAULT_BATCH = 256
DEFAULT_BLOCK = 64
DEFAULT_SHARD_SIZE = 1000
LOCK = ".ei_toolkit-generate.lock"
"""The lock file a run holds (``fcntl.flock``, exclusive) from its first check to its last shard; it holds the pid."""


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


def model_identity(model: Model, model_id: str | None) -> dict[str, str]:
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



def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or by default CUDA device ``LOCAL_RANK`` when CUDA is available, else the CPU."""
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
        check_layout({"n": n, "shard_size": shard_size, "shape": list(shape)}, "generate")
    except ManifestError as e:
        raise ValueError(str(e)) from None
    out_dir = Path(out_dir)
    matrix = isinstance(sde, MatrixLinearSDE)
    if method is None and not matrix:  # sample()'s default for this budget, with its grid
        method, default_grid = default_method(nfe, guidance_scale=guidance_scale_of(model), sde=sde,
                                              dim=math.prod(shape))
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
    device = resolve_device(device)
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
            "model": model_identity(self.model, model_id), "condition": self.condition_id,
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
            old = read_manifest(out_dir)["config"]
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
    found = scan_shards(out_dir, range(group.rank, n_shards, group.world), size, n, job.shape, digest)
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
            write_shard(out_dir / shard_name(k), np.arange(rows.start, rows.stop, dtype=np.int64), x, digest)
            written.append(k)
    return written
