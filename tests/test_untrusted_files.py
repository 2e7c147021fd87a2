"""Every hostile file and race of issue 24 (docs/untrusted_files.md): statistics, grid files, manifests and shards
as an attacker or an unlucky user would leave them, and concurrent runs into one output directory. Each is refused
with a clear error naming the file, or handled safely (a bad shard is reported bad and regenerated); the file cases
run in one subprocess under an address-space limit (RLIMIT_AS 3 GiB) and a timeout, and each must finish within a
generous time bound and leave the process's peak RSS bounded, so "refused after allocating 6 GB" or "runs for
hours" fail here."""

import io
import json
import os
import re
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.generate import LOCK, ShardConfigError, ShardLockError, shard_name
from ei_toolkit.integrators.ems import STATS_FORMAT, _sde_tag

SDE = ei.DiscreteVP.linear()
SMALL = {"shard_size": 10, "block": 5, "nfe": 4, "t_end": SDE.t0, "progress": False}
MEMORY_LIMIT = 3 << 30  # address space of the subprocess (torch and diffusers take ~0.5 GiB)
PEAK_RSS_BOUND = 1536 << 20  # bytes of peak RSS the whole set of hostile files may cost
CASE_SECONDS = 300  # per case: "does not run for hours"; a bound, not a timing (10000 evaluations take ~30 s alone)


def zero_model(x, t):
    return 0.1 * x


def small_statistics(model_id="model-a", shape=(4,)):
    lam = torch.linspace(-4.0, 5.0, 9, dtype=torch.float64)
    return ei.ModelStatistics(lam=lam, l=torch.zeros(9), s=torch.full((9,), -0.5), b=torch.full((9, *shape), 0.01),
                              sde=_sde_tag(SDE), samples=8, model=model_id)


def stats_doc(st, **change):
    doc = {"format": STATS_FORMAT, "version": 2, "sde": st.sde, "samples": st.samples, "model": st.model,
           "sha256": st.sha256, "lam": st.lam, "l": st.l, "s": st.s, "b": st.b}
    doc.update(change)
    return doc


def npy_bytes(descr, shape, data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


# ------------------------------------------------------------------------------------------------ building them

def build_statistics(d: Path) -> dict[str, tuple[str, str]]:
    """Hostile statistics files in d; {case: (call, expected message)} for the runner."""
    st = small_statistics()
    good = st.save(d / "good.pt")
    raw = good.read_bytes()
    torch.save(stats_doc(st, b=torch.zeros(1).expand(4, 10**8)), d / "expanded_issue.pt")  # the 2.5 KB file
    torch.save(stats_doc(st, b=torch.zeros(1, dtype=torch.float64).expand(9, 10**6)), d / "expanded.pt")
    torch.save(stats_doc(st, b=torch.zeros(9 * 8, dtype=torch.float64).reshape(8, 9).t()), d / "strided.pt")
    torch.save(stats_doc(st, b=torch.zeros(9 * 4 + 100, dtype=torch.float64)[:36].reshape(9, 4)), d / "slice.pt")
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "text.pt").write_text("lam = [1, 2, 3]\n")
    (d / "empty.pt").write_bytes(b"")
    torch.save({"format": STATS_FORMAT, "payload": os.system}, d / "gadget.pt")
    b = st.b.clone()
    b[3, 1] *= 2.0**40  # what a flipped exponent bit does, the file re-saved with the old digest
    torch.save(stats_doc(st, b=b), d / "tampered.pt")
    at = raw.find(st.b.numpy().tobytes())
    flipped = bytearray(raw)
    flipped[at + 8 * 5 + 7] ^= 0x10  # an exponent bit of one value of b, in place
    (d / "flipped.pt").write_bytes(bytes(flipped))
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(d / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    torch.save({**stats_doc(st), "version": 1}, d / "version1.pt")
    os.mkfifo(d / "fifo.pt")
    (d / "link.pt").symlink_to(good)
    (d / "dir.pt").mkdir()
    def load(name):
        return ["stats", name, {}]

    named = r"statistics file '.*{}\.pt'"
    return {
        "statistics: stride-0 view of 4 x 10**8 (2.5 KB)": (load("expanded_issue.pt"), named.format("expanded_issue")),
        "statistics: stride-0 view of 9 x 10**6": (load("expanded.pt"), r"is a view"),
        "statistics: a transposed (strided) table": (load("strided.pt"), r"b is a view"),
        "statistics: a slice of a larger storage": (load("slice.pt"), r"b is a view"),
        "statistics: truncated": (load("truncated.pt"), named.format("truncated")),
        "statistics: text": (load("text.pt"), named.format("text") + ".*not a torch.save zip"),
        "statistics: empty": (load("empty.pt"), named.format("empty")),
        "statistics: pickle gadget": (load("gadget.pt"), r"refused by the weights-only unpickler"),
        "statistics: value changed, digest kept": (load("tampered.pt"), r"corrupt: its content does not match"),
        "statistics: flipped exponent bit in place": (load("flipped.pt"), named.format("flipped")),
        "statistics: compressed zip members": (load("deflated.pt"), r"compressed"),
        "statistics: version 1 (no digest)": (load("version1.pt"), r"unsupported statistics version 1"),
        "statistics: FIFO": (load("fifo.pt"), r"not a regular file"),
        "statistics: symbolic link": (load("link.pt"), r"symbolic link"),
        "statistics: a directory": (load("dir.pt"), r"not a regular file"),
        "statistics: another model's": (["stats", "good.pt", {"model": "model-b"}],
                                        r"estimated from the model 'model-a', not from 'model-b'"),
    }


def build_grids(d: Path) -> dict[str, tuple[str, str]]:
    grid = ei.time_grid(SDE, "uniform_logrho", 5, SDE.t_max, SDE.t0)
    method = "logrhoab2"
    path = ei.save_grid(d / "grid.json", grid, model="m", sde=SDE, method=method, nfe=5)
    doc = json.loads(path.read_text())
    edited = {**doc, "times": [600.0, *doc["times"][1:]]}
    (d / "edited.json").write_text(json.dumps(edited))
    (d / "nested.json").write_text("[" * 200_000)
    (d / "bigint.json").write_text(json.dumps({**doc, "times": []})[:-3] + "[" + "9" * 5000 + "]}")
    (d / "inf.json").write_text(json.dumps({**doc, "times": doc["times"][:-1]})[:-2] + ", 1e999]}")
    (d / "latin1.json").write_bytes(b'{"format": "\xff\xfe"}')
    (d / "huge.json").write_bytes(b" " * (2 << 20))
    os.mkfifo(d / "fifo.json")
    def load(name):
        return ["grid", name, {"model": "m", "method": method, "nfe": 5}]

    return {
        "grid: ends edited (999 -> 600)": (load("edited.json"), r"was edited or is corrupt"),
        "grid: 200000 nested brackets": (load("nested.json"), r"nested.json.*RecursionError"),
        "grid: a 5000-digit integer": (load("bigint.json"), r"bigint.json"),
        "grid: 1e999": (load("inf.json"), r"inf.json"),
        "grid: not UTF-8": (load("latin1.json"), r"latin1.json.*UnicodeDecodeError"),
        "grid: 2 MiB": (load("huge.json"), r"huge.json.* bytes, more than"),
        "grid: FIFO": (load("fifo.json"), r"fifo.json.*not a regular file"),
    }


def build_shards(d: Path) -> dict[str, tuple[str, str]]:
    """A valid run of 6 shards, its shards 0-5 replaced by hostile files; manifests of their own directories."""
    run = d / "run"
    ei.generate(zero_model, SDE, (4,), 60, run, model_id="zero", **SMALL)
    other = d / "other"
    ei.generate(zero_model, SDE, (4,), 60, other, model_id="zero", seed=1, **SMALL)
    with zipfile.ZipFile(run / shard_name(0)) as z:
        digest = z.read("config.npy")  # the run's configuration digest: only the hostile part differs
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # the 490-byte shard declaring 10**12 floats
        z.writestr("index.npy", npy_bytes("<i8", (10,), np.arange(10, dtype=np.int64).tobytes()))
        z.writestr("x.npy", npy_bytes("<f4", (10**12,), b"\0" * 64))
        z.writestr("config.npy", digest)
    (run / shard_name(0)).write_bytes(buf.getvalue())
    with zipfile.ZipFile(run / shard_name(1), "w", zipfile.ZIP_DEFLATED) as z:  # a deflate bomb: 256 MB declared
        z.writestr("index.npy", npy_bytes("<i8", (10,), np.arange(10, 20, dtype=np.int64).tobytes()))
        z.writestr("config.npy", digest)
        with z.open("x.npy", "w", force_zip64=True) as m:
            m.write(npy_bytes("<f4", (64 << 20,)))
            zeros = bytes(16 << 20)
            for _ in range(16):
                m.write(zeros)
    (run / shard_name(2)).unlink()
    os.mkfifo(run / shard_name(2))
    np.save(run / "bare.npy", np.zeros((10, 4), np.float32))
    os.replace(run / "bare.npy", run / shard_name(3))
    (run / shard_name(4)).write_bytes((other / shard_name(4)).read_bytes())  # another seed's shard 4
    (run / shard_name(5)).unlink()
    (run / shard_name(5)).symlink_to(other / shard_name(5))
    manifest = json.loads((run / "manifest.json").read_text())
    cases = {}
    for name, config in {"huge_n": {**manifest["config"], "n": 10**15, "shard_size": 1},
                         "zero_size": {**manifest["config"], "shard_size": 0},
                         "string_n": {**manifest["config"], "n": "8"},
                         "list_config": [1, 2, 3],
                         "huge_shard": {**manifest["config"], "n": 10**9, "shard_size": 10**9, "shape": [10**4]}
                         }.items():
        (d / name).mkdir()
        (d / name / "manifest.json").write_text(json.dumps({**manifest, "config": config}))
        cases[f"manifest: {name}"] = (["verify", name, {}], r"manifest.json")
    (d / "nested").mkdir()
    (d / "nested" / "manifest.json").write_text("{" * 100_000)
    cases["manifest: nested braces"] = (["verify", "nested", {}], r"manifest.json is unreadable")
    cases["manifest: n 10**15 through the CLI"] = (["evaluate_cli", "huge_n", {}], "")
    cases["shards: every hostile one reported bad"] = (["report_bad", "run", {}], "")
    cases["shards: load_shards refuses the set"] = (["load_shards", "run", {}], r"0 of 6 shards valid")
    cases["shards: a resume regenerates them"] = (["resume", "run", {}], "")
    return cases


RUNNER = r"""
import argparse, json, resource, sys, time, warnings
from pathlib import Path
import torch
import ei_toolkit as ei
from ei_toolkit.cli.generate import evaluate_command
from ei_toolkit.shards import verify_shards

D = Path(sys.argv[1])
SDE = ei.DiscreteVP.linear()
cases = json.loads((D / "cases.json").read_text())


def zero_model(x, t):
    return 0.1 * x


def noisy(x, t):
    return 0.1 * x + 1e-6 * torch.randn(x.shape, dtype=x.dtype)


def report_bad(out):
    r = verify_shards(out)
    return {"valid": r.valid, "missing": r.missing, "bad": r.bad}


def resume(out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ei.generate(zero_model, SDE, (4,), 60, out, model_id="zero", shard_size=10, block=5, nfe=4,
                          t_end=SDE.t0, progress=False)
    return {"written": sorted(res.written), "complete": verify_shards(out).complete}


def adaptive(dtype, rtol, model):
    x = torch.randn(2, 4, dtype=dtype)
    return ei.solve(model, x, SDE, method="adaptive", options={"rtol": rtol, "atol": rtol}).nfe


CALLS = {
    "stats": lambda arg, kw: ei.ModelStatistics.load(D / arg, **kw),
    "grid": lambda arg, kw: ei.load_grid(D / arg, sde=SDE, **kw),
    "verify": lambda arg, kw: verify_shards(D / arg),
    "evaluate_cli": lambda arg, kw: evaluate_command(argparse.Namespace(out=str(D / arg))),
    "report_bad": lambda arg, kw: report_bad(D / arg),
    "load_shards": lambda arg, kw: ei.load_shards(D / arg),
    "resume": lambda arg, kw: resume(D / arg),
    "adaptive_float32": lambda arg, kw: adaptive(torch.float32, 1e-14, zero_model),
    "adaptive_noisy": lambda arg, kw: adaptive(torch.float64, 1e-9, noisy),
    "optimize_noisy": lambda arg, kw: ei.optimize_grid(noisy, torch.randn(2, 4, dtype=torch.float64), SDE,
                                                       method="logrhoab2", nfe=5, max_solves=10,
                                                       reference_rtol=1e-12),
}

for name, ((kind, arg, kw), _) in cases.items():
    start = time.perf_counter()
    try:
        value = CALLS[kind](arg, kw)
        row = {"outcome": "returned", "value": value if isinstance(value, (dict, list)) else repr(value)[:200]}
    except SystemExit as e:
        row = {"outcome": "SystemExit", "mro": [], "message": str(e.code)}
    except BaseException as e:
        row = {"outcome": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__], "message": str(e)}
    row["seconds"] = time.perf_counter() - start
    row["name"] = name
    print(json.dumps(row), flush=True)
print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
"""

RUNTIME_CASES = {
    "adaptive: rtol 1e-14 on float32": (["adaptive_float32", "", {}], r"rtol.*below what torch.float32 can meet"),
    "adaptive: noisy model at rtol 1e-9 (default cap)": (["adaptive_noisy", "", {}], r"max_nfe=10000"),
    "optimize_grid: the reference solve is bounded": (["optimize_noisy", "", {}], r"max_nfe=10000\b"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    cases = {**build_statistics(d), **build_grids(d), **build_shards(d), **RUNTIME_CASES}
    (d / "cases.json").write_text(json.dumps(cases))
    (d / "runner.py").write_text(RUNNER)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(d / "runner.py"), str(d)], capture_output=True, text=True,
                          timeout=900, preexec_fn=limit, env=env, cwd=d)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows and "maxrss" in rows[-1], f"the runner died (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return cases, {r["name"]: r for r in rows[:-1]}, rows[-1]["maxrss"], d


REFUSED = [
    *[f"statistics: {n}" for n in ("stride-0 view of 4 x 10**8 (2.5 KB)", "stride-0 view of 9 x 10**6",
                                   "a transposed (strided) table", "a slice of a larger storage", "truncated", "text",
                                   "empty", "pickle gadget", "value changed, digest kept",
                                   "flipped exponent bit in place", "compressed zip members", "version 1 (no digest)",
                                   "FIFO", "symbolic link", "a directory", "another model's")],
    *[f"grid: {n}" for n in ("ends edited (999 -> 600)", "200000 nested brackets", "a 5000-digit integer", "1e999",
                             "not UTF-8", "2 MiB", "FIFO")],
    *[f"manifest: {n}" for n in ("huge_n", "zero_size", "string_n", "list_config", "huge_shard", "nested braces")],
    "shards: load_shards refuses the set",
    *RUNTIME_CASES,
]


@pytest.mark.parametrize("name", REFUSED)
def test_each_hostile_input_is_refused_with_a_clear_error(hostile, name):
    cases, rows, _, _ = hostile
    row = rows[name]
    assert row["outcome"] != "returned", f"{name}: accepted ({row})"
    assert "MemoryError" not in row["mro"] and "RecursionError" not in row["mro"], row
    assert "ValueError" in row["mro"] or "ShardError" in row["mro"] or "NFEBudgetExceeded" in row["mro"], row
    assert row["seconds"] < CASE_SECONDS, row
    assert re.search(cases[name][1], row["message"], re.S), (name, row["message"])
    assert "weights_only=False" not in row["message"] and "\n" not in row["message"].strip(), row["message"]


def test_the_cli_reports_a_hostile_manifest_in_one_line(hostile):
    _, rows, _, _ = hostile
    row = rows["manifest: n 10**15 through the CLI"]
    assert row["outcome"] == "SystemExit" and row["seconds"] < CASE_SECONDS, row
    assert re.search(r"^ei-toolkit evaluate: .*makes 1000000000000000 shards, more than", row["message"]), row
    assert "\n" not in row["message"]


def test_hostile_shards_are_reported_bad_and_a_resume_regenerates_them(hostile):
    _, rows, _, _ = hostile
    report = rows["shards: every hostile one reported bad"]
    assert report["outcome"] == "returned" and report["seconds"] < CASE_SECONDS, report
    bad = report["value"]["bad"]
    assert sorted(map(int, bad)) == [0, 1, 2, 3, 4, 5], report
    assert "10, 4" in bad["0"] or "(1000000000000,)" in bad["0"], bad["0"]  # the header is checked, not allocated
    assert "declares" in bad["1"]  # the bomb's declared size, before inflating
    assert "not a regular file" in bad["2"]  # the FIFO: never opened for blocking reads
    assert "BadZipFile" in bad["3"]  # a bare .npy
    assert "another configuration" in bad["4"]  # another seed's shard
    assert "symbolic link" in bad["5"]
    resumed = rows["shards: a resume regenerates them"]
    assert resumed["outcome"] == "returned" and resumed["value"] == {"written": [0, 1, 2, 3, 4, 5], "complete": True}


def test_the_hostile_files_cost_bounded_memory(hostile):
    _, rows, maxrss, _ = hostile
    assert maxrss < PEAK_RSS_BOUND, f"peak RSS {maxrss / 2**20:.0f} MiB"
    assert not [r for r in rows.values() if "MemoryError" in r.get("mro", [])]


# ------------------------------------------------------------------------------------------------ from_pretrained

def _saved_scheduler(folder: Path, st) -> None:
    from ei_toolkit.diffusion.scheduler import EIScheduler

    folder.parent.mkdir(parents=True, exist_ok=True)
    path = st.save(folder.parent / f"{folder.name}-stats.pt")
    EIScheduler(method="ems-logrhoab1", statistics=str(path)).save_pretrained(folder)


@pytest.mark.parametrize("named", ["../other/ems_statistics.pt", "/ABS/ems_statistics.pt", "sub/../../x.pt",
                                   "..\\x.pt", "", 5])
def test_from_pretrained_reads_statistics_from_its_folder_only(tmp_path, named):
    pytest.importorskip("diffusers")
    from ei_toolkit.diffusion.scheduler import EIScheduler

    folder = tmp_path / "pipe" / "scheduler"
    _saved_scheduler(folder, small_statistics(shape=(4,)))
    (tmp_path / "other").mkdir()
    small_statistics().save(tmp_path / "other" / "ems_statistics.pt")  # what the config would point at
    config = json.loads((folder / "scheduler_config.json").read_text())
    named = named.replace("/ABS", str(tmp_path / "other")) if isinstance(named, str) else named
    (folder / "scheduler_config.json").write_text(json.dumps({**config, "statistics": named}))
    with pytest.raises(ValueError, match=r"scheduler config in .*names statistics"):
        EIScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")


def test_from_pretrained_refuses_a_link_out_of_the_folder(tmp_path):
    pytest.importorskip("diffusers")
    from ei_toolkit.diffusion.scheduler import EIScheduler

    folder = tmp_path / "pipe"
    _saved_scheduler(folder, small_statistics())
    secret = small_statistics(model_id="secret").save(tmp_path / "secret.pt")
    (folder / "ems_statistics.pt").unlink()
    (folder / "ems_statistics.pt").symlink_to(secret)
    with pytest.raises(ValueError, match="leads out of the scheduler's folder"):
        EIScheduler.from_pretrained(folder)


HUB = r"""
import sys
from ei_toolkit.diffusion.scheduler import EIScheduler
s = EIScheduler.from_pretrained("org/pipe", subfolder="scheduler")
print(s.method.statistics.model)
try:
    EIScheduler.from_pretrained("org/nostats", subfolder="scheduler")
except ValueError as e:
    print("refused:", e)
"""


def test_from_pretrained_fetches_a_repo_ids_statistics_from_that_repo(tmp_path):
    """A hub-style id: the statistics come from the same repo and subfolder through huggingface_hub (an offline
    cache here), never from a file of that name in the working directory."""
    pytest.importorskip("diffusers")
    cache = tmp_path / "hf" / "hub"
    for repo, with_stats in (("pipe", True), ("nostats", False)):
        root = cache / f"models--org--{repo}"
        commit = "0123456789abcdef0123456789abcdef01234567"
        snap = root / "snapshots" / commit / "scheduler"
        snap.parent.mkdir(parents=True)
        _saved_scheduler(snap, small_statistics(model_id="the repo's model"))
        if not with_stats:
            (snap / "ems_statistics.pt").unlink()
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(commit)
    work = tmp_path / "work"
    work.mkdir()
    small_statistics(model_id="another model in the working directory").save(work / "ems_statistics.pt")
    (work / "scheduler").mkdir()
    small_statistics(model_id="another model in the working directory").save(work / "scheduler" / "ems_statistics.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", HUB], capture_output=True, text=True, timeout=300, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "the repo's model", proc.stdout
    assert lines[1].startswith("refused:") and "org/nostats" in lines[1] and "ems_statistics.pt" in lines[1], lines


# ------------------------------------------------------------------------------------------------ races

def test_a_link_planted_under_a_temporary_name_is_never_written_through(tmp_path):
    """The old temporary names were predictable (.shard-NNNNNN.npz.tmp-<pid>, .manifest.json.tmp-<pid>): links
    planted there, before the run and while it runs, must not make it overwrite their target."""
    out = tmp_path / "shared"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pid = os.getpid()
    (out / f".manifest.json.tmp-{pid}").symlink_to(victim)

    def planting(x, t):
        for k in range(4):
            link = out / f".shard-{k:06d}.npz.tmp-{pid}"
            if not os.path.lexists(link):
                link.symlink_to(victim)
        return 0.1 * x

    ei.generate(planting, SDE, (4,), 40, out, model_id="planting", **SMALL)
    assert victim.read_text() == "precious"
    assert ei.verify_shards(out).complete
    assert all(not (out / shard_name(k)).is_symlink() for k in range(4))


HOLD = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()}\n".encode())
print("locked", flush=True)
time.sleep(300)
"""


def test_a_second_run_is_refused_while_the_first_holds_the_directory(tmp_path):
    """While a run holds the lock (here a stand-in process), a second run changes nothing (it used to delete the
    first run's temporary shard, which then died with FileNotFoundError) and names the holder's pid; once the
    holder is gone (killed: no clean-up), the lock is free again."""
    out = tmp_path / "shared"
    ei.generate(zero_model, SDE, (4,), 20, out, model_id="zero", **SMALL)
    (out / shard_name(1)).unlink()
    in_flight = out / ".shard-000001.npz.k3j2h1.tmp"  # the first run's temporary shard, being written
    in_flight.write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(ShardLockError, match=rf"another generate run \(pid {holder.pid}\).*nothing was changed"):
            ei.generate(zero_model, SDE, (4,), 20, out, model_id="zero", **SMALL)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        holder.kill()
        holder.wait(timeout=60)
    result = ei.generate(zero_model, SDE, (4,), 20, out, model_id="zero", **SMALL)
    assert result.written == [1] and not in_flight.exists()  # now stale: removed by the run that holds the lock
    assert ei.verify_shards(out).complete


RACER = r"""
import sys, time
import torch
import ei_toolkit as ei
from ei_toolkit.generate import ShardConfigError

sde = ei.DiscreteVP.linear()


def slow(x, t):
    time.sleep(0.01)
    return 0.1 * x


try:
    ei.generate(slow, sde, (4,), 40, sys.argv[1], seed=int(sys.argv[2]), model_id="slow", shard_size=10, block=5,
                nfe=4, t_end=sde.t0, progress=False)
except ShardConfigError as e:
    print(f"refused: {e}")
    sys.exit(3)
print("done")
"""


@pytest.mark.parametrize("trial", range(3))
def test_two_runs_with_other_seeds_into_one_directory_never_mix(tmp_path, trial):
    """The issue's race: two runs started together with --seed 0 and --seed 1. One completes, the other is refused
    (the lock, or the manifest it then finds); the shards all hold the manifest's seed."""
    out = tmp_path / "shared"
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for seed in (0, 1)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 3], results
    refused = next(r for r in results if r[2] == 3)[0]
    assert "another generate run" in refused or "another configuration" in refused, refused
    seed = json.loads((out / "manifest.json").read_text())["config"]["seed"]
    assert ei.verify_shards(out).complete
    alone = ei.generate(lambda x, t: 0.1 * x, SDE, (4,), 40, tmp_path / "alone", seed=seed, model_id="slow", **SMALL)
    assert alone.generated == 40
    assert np.array_equal(ei.load_shards(out)[1], ei.load_shards(tmp_path / "alone")[1])


def test_an_existing_manifest_is_never_replaced(tmp_path):
    out = tmp_path / "shared"
    ei.generate(zero_model, SDE, (4,), 20, out, model_id="zero", **SMALL)
    for k in range(2):
        (out / shard_name(k)).unlink()  # no shards left: the manifest used to be replaced with a warning
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ShardConfigError, match=r"the manifest \(no shards yet\) of another configuration.*seed"):
        ei.generate(zero_model, SDE, (4,), 20, out, seed=1, model_id="zero", **SMALL)
    assert (out / "manifest.json").read_bytes() == before


def test_temporary_files_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    leftovers = [out / ".manifest.json.tmp-4242", out / ".shard-000000.npz.tmp-4242",
                 out / ".manifest.json.x8y7z6.tmp", out / ".shard-000001.npz.q1w2e3.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    ei.generate(zero_model, SDE, (4,), 20, out, model_id="zero", **SMALL)
    assert not [p for p in leftovers if p.exists()]
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, "manifest.json", shard_name(0), shard_name(1)])


def test_a_shard_of_another_configuration_is_not_kept(tmp_path):
    """A shard copied from another run (here: another model id) has the right indices, shape and dtype; only the
    configuration digest tells it apart."""
    a, b = tmp_path / "a", tmp_path / "b"
    ei.generate(zero_model, SDE, (4,), 20, a, model_id="zero", **SMALL)
    ei.generate(lambda x, t: 0.2 * x, SDE, (4,), 20, b, model_id="other", **SMALL)
    (a / shard_name(0)).write_bytes((b / shard_name(0)).read_bytes())
    report = ei.verify_shards(a)
    assert report.valid == [1] and "another configuration" in report.bad[0]
