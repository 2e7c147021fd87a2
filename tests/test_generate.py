"""Sharded generation (ei.generate): the same samples for 2 processes under torchrun (gloo) as for 1 process with
another batch size, ODE and stochastic; resume after lost, corrupt or half-done shards regenerates only those; a
rerun with another configuration is refused; corrupt shards are detected; the evaluation over shards is the digits
Frechet distance of benchmarks/bench_digits.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.cli import main
from ei_toolkit.generate import LOCK, ShardConfigError, ShardError, initial_noise, shard_name
from ei_toolkit.metrics import FeatureStatistics, digits_frechet_distance, feature_statistics, frechet_distance
from ei_toolkit.models import load_digits_model

SDE = ei.DiscreteVP.linear()
SMALL = {"shard_size": 10, "block": 4, "nfe": 4, "t_end": SDE.t0, "progress": False}
PROBE = 4  # generate first samples sample 0 alone (NFE 4 evaluations of one row) to check its arguments

TWO_PROCESSES = """
import sys
import ei_toolkit as ei
from ei_toolkit.models import load_digits_model

sde = ei.DiscreteVP.linear()
model = load_digits_model()
small = dict(shard_size=10, block=4, nfe=4, t_end=sde.t0, progress=False, batch=4)
a = ei.generate(model, sde, (1, 8, 8), 24, sys.argv[1] + "/ode", **small)
b = ei.generate(model, sde, (1, 8, 8), 24, sys.argv[1] + "/sddim", method="sddim", lam=1.0, **small)
print(f"rank {a.rank} of {a.world_size} wrote {a.written} {b.written}")
"""


class Counting(torch.nn.Module):
    """The digits model, counting the samples it is called on; ``fail_after`` calls, it raises (a crash)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.inner = load_digits_model()
        self.samples = 0
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, x, t):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner(x, t)


class Slow(Counting):
    """Named as the model of the SLOW script (the manifest records the class): the same weights, counted."""


def mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir())}


def test_two_processes_under_torchrun_give_the_samples_of_one_process(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2 wrote [0, 2] [0, 2]" in proc.stdout and "rank 1 of 2 wrote [1] [1]" in proc.stdout
    model = load_digits_model()
    for name, kw in (("ode", {}), ("sddim", {"method": "sddim", "lam": 1.0})):
        one = ei.generate(model, SDE, (1, 8, 8), 24, tmp_path / "one" / name, batch=9, **SMALL, **kw)
        assert one.world_size == 1 and one.written == [0, 1, 2] and one.generated == 24
        i1, x1 = ei.load_shards(tmp_path / "one" / name)
        i2, x2 = ei.load_shards(tmp_path / "two" / name)
        assert i1.dtype == np.int64 and (i1 == np.arange(24)).all() and (i2 == i1).all()
        assert x1.dtype == np.float32 and x1.shape == (24, 1, 8, 8)
        assert np.abs(x1 - x2).max() <= 1e-5, (name, np.abs(x1 - x2).max())
        manifest = json.loads((tmp_path / "two" / name / "manifest.json").read_text())
        assert manifest["created"]["world_size"] == 2 and manifest["config"]["lam"] == kw.get("lam")
    _, ode = ei.load_shards(tmp_path / "one" / "ode")
    _, noisy = ei.load_shards(tmp_path / "one" / "sddim")
    assert np.abs(ode - noisy).max() > 0.1  # the stochastic method did draw noise


def test_a_sample_depends_on_seed_and_index_only(tmp_path):
    a = initial_noise(3, [5, 6, 7], (1, 8, 8))
    b = initial_noise(3, [7, 5], (1, 8, 8))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], initial_noise(4, [5], (1, 8, 8))[0])
    # a stochastic sample is the same alone and in a batch (per-sample step-noise generators)
    model = load_digits_model()
    kw = {"method": "sddim", "lam": 1.0, "nfe": 4, "shard_size": 10, "block": 1, "t_end": SDE.t0, "progress": False}
    out = {}
    for batch in (1, 5):
        ei.generate(model, SDE, (1, 8, 8), 5, tmp_path / str(batch), batch=batch, **kw)
        out[batch] = ei.load_shards(tmp_path / str(batch))[1]
    assert np.array_equal(out[1], out[5])


def test_resume_regenerates_only_missing_and_corrupt_shards(tmp_path):
    model = Counting()
    first = ei.generate(model, SDE, (1, 8, 8), 30, tmp_path, batch=8, **SMALL)
    assert first.written == [0, 1, 2] and model.samples == 30 * 4 + PROBE
    _, x_before = ei.load_shards(tmp_path)
    (tmp_path / shard_name(1)).unlink()
    data = (tmp_path / shard_name(2)).read_bytes()
    (tmp_path / shard_name(2)).write_bytes(data[: len(data) // 2])  # a torn write
    report = ei.verify_shards(tmp_path)
    assert report.valid == [0] and report.missing == [1] and list(report.bad) == [2] and not report.complete
    before = mtimes(tmp_path)
    model.samples = 0
    with pytest.warns(RuntimeWarning, match="regenerating 1 bad shard"):
        again = ei.generate(model, SDE, (1, 8, 8), 30, tmp_path, batch=8, **SMALL)
    assert again.written == [1, 2] and again.reused_shards == 1 and list(again.bad_shards) == [2]
    assert model.samples == 20 * 4 + PROBE  # only the 20 samples of shards 1 and 2
    after = mtimes(tmp_path)
    assert after[shard_name(0)] == before[shard_name(0)] and after["manifest.json"] == before["manifest.json"]
    assert np.array_equal(ei.load_shards(tmp_path)[1], x_before)
    model.samples = 0
    assert ei.generate(model, SDE, (1, 8, 8), 30, tmp_path, batch=8, **SMALL).generated == 0
    assert model.samples == PROBE


def test_a_crash_mid_run_leaves_whole_shards_and_the_rerun_finishes(tmp_path):
    # batch 8 = two blocks of 4 (two model calls per step, 4 steps): the 4th batch crashes after samples 0..19
    crashing = Counting(fail_after=PROBE + 3 * 4 * 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ei.generate(crashing, SDE, (1, 8, 8), 40, tmp_path, batch=8, **SMALL)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [LOCK, "manifest.json", shard_name(0), shard_name(1)], names  # no temporary or half files
    assert ei.verify_shards(tmp_path).valid == [0, 1]
    model = Counting()
    result = ei.generate(model, SDE, (1, 8, 8), 40, tmp_path, batch=8, **SMALL)
    assert result.written == [2, 3] and model.samples == 20 * 4 + PROBE
    reference = ei.generate(load_digits_model(), SDE, (1, 8, 8), 40, tmp_path / "ref", batch=40, **SMALL)
    assert reference.generated == 40
    assert np.array_equal(ei.load_shards(tmp_path)[1], ei.load_shards(tmp_path / "ref")[1])


SLOW = """
import sys, time
import torch
import ei_toolkit as ei
from ei_toolkit.models import load_digits_model


class Slow(torch.nn.Module):
    def __init__(self, pause):
        super().__init__()
        self.inner, self.pause = load_digits_model(), pause

    def forward(self, x, t):
        time.sleep(self.pause)
        return self.inner(x, t)


sde = ei.DiscreteVP.linear()
ei.generate(Slow(float(sys.argv[2])), sde, (1, 8, 8), 200, sys.argv[1], batch=10, block=10, shard_size=10, nfe=4,
            t_end=sde.t0, progress=False)
"""


def test_a_killed_process_leaves_whole_shards_and_the_rerun_regenerates_only_the_rest(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0.1"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("shard-*.npz"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    survivors = sorted(int(p.name[6:12]) for p in out.glob("shard-*.npz"))
    assert 3 <= len(survivors) < 20, survivors  # killed mid-run
    report = ei.verify_shards(out)
    assert report.valid == survivors and not report.bad  # every shard on disk is whole
    before = mtimes(out)
    model = Slow()
    result = ei.generate(model, SDE, (1, 8, 8), 200, out, batch=10, block=10, shard_size=10, nfe=4, t_end=SDE.t0,
                         progress=False)
    assert sorted(result.written) == sorted(set(range(20)) - set(survivors))
    assert model.samples == 10 * (20 - len(survivors)) * 4 + PROBE
    assert all(mtimes(out)[shard_name(k)] == before[shard_name(k)] for k in survivors)
    assert not list(out.glob(".*.tmp*"))  # a temporary file of the killed run is removed
    assert ei.verify_shards(out).complete


def test_a_rerun_with_another_configuration_is_refused_and_changes_nothing(tmp_path, capsys):
    model = load_digits_model()
    ei.generate(model, SDE, (1, 8, 8), 12, tmp_path, batch=6, **SMALL)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ShardConfigError, match=r"nfe: 4 there, 5 now.*nothing was changed"):
        ei.generate(model, SDE, (1, 8, 8), 12, tmp_path, batch=6, **{**SMALL, "nfe": 5})
    with pytest.raises(ShardConfigError, match=r"seed: 0 there, 1 now"):
        ei.generate(model, SDE, (1, 8, 8), 12, tmp_path, seed=1, batch=6, **SMALL)
    other = load_digits_model()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(ShardConfigError, match=r"model: .*sha256"):
        ei.generate(other, SDE, (1, 8, 8), 12, tmp_path, batch=6, **SMALL)
    with pytest.raises(SystemExit, match="another configuration"):
        main(["generate", "-n", "12", "--out", str(tmp_path), "--shard-size", "10"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ShardConfigError, match=r"no manifest\.json"):
        ei.generate(model, SDE, (1, 8, 8), 12, tmp_path, batch=6, **SMALL)


def test_corrupt_shards_are_detected(tmp_path):
    ei.generate(load_digits_model(), SDE, (1, 8, 8), 40, tmp_path, batch=20, **SMALL)
    with np.load(tmp_path / shard_name(0)) as z:
        index, x, config = z["index"], z["x"], z["config"]  # config: the digest of the run's configuration
    nan = np.where(np.arange(10)[:, None, None, None] == 3, np.nan, x)
    np.savez(tmp_path / shard_name(0), index=index, x=nan, config=config)
    np.savez(tmp_path / shard_name(1), index=index + 10 + 1, x=x, config=config)  # wrong indices
    np.savez(tmp_path / shard_name(2), index=index + 20, x=x[:, :, :4], config=config)  # wrong shape
    raw = bytearray((tmp_path / shard_name(3)).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the data: the zip CRC check catches it
    (tmp_path / shard_name(3)).write_bytes(bytes(raw))
    bad = ei.verify_shards(tmp_path).bad
    assert sorted(bad) == [0, 1, 2, 3]
    assert "NaN" in bad[0] and "index" in bad[1] and "expected float32" in bad[2] and "unreadable" in bad[3]
    with pytest.raises(ShardError, match="0 of 4 shards valid"):
        ei.evaluate_shards(tmp_path)
    with pytest.raises(SystemExit, match="bad"):
        main(["evaluate", str(tmp_path)])


def test_evaluation_over_shards_is_the_digits_frechet_distance(tmp_path, capsys):
    assert main(["generate", "-n", "60", "--out", str(tmp_path), "--batch", "25", "--shard-size", "16", "--nfe", "5",
                 "--no-progress", "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert "60 samples generated by 1 process(es)" in printed and "over 60 samples in 4 shards" in printed
    result = ei.evaluate_shards(tmp_path)
    _, x = ei.load_shards(tmp_path)
    assert result["n"] == 60 and result["fd"] == pytest.approx(digits_frechet_distance(torch.from_numpy(x)), rel=1e-9)
    assert f"FD {result['fd']:.3f}" in printed
    noise = digits_frechet_distance(torch.randn(60, 1, 8, 8).clamp(-1, 1))
    assert 0 < result["fd"] < noise / 3  # 5-step digits are far closer to the held-out digits than noise


def test_streamed_statistics_and_the_shipped_reference():
    f = torch.randn(101, 64, dtype=torch.float64) @ torch.randn(64, 64, dtype=torch.float64)
    stats = FeatureStatistics(dim=64)
    for part in f.split(17):
        stats.update(part)
    mean, cov = feature_statistics(f)
    assert np.allclose(stats.mean, f.mean(0).numpy()) and np.allclose(mean, stats.mean)
    assert np.allclose(stats.covariance(), np.cov(f.numpy(), rowvar=False) + 1e-6 * np.eye(64), atol=1e-9)
    assert frechet_distance(f.numpy(), (mean, cov)) == pytest.approx(0, abs=1e-6)
    assert frechet_distance((mean, cov), (mean + 1, cov)) == pytest.approx(64, rel=1e-6)
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    from train_digits import digits_split, labelled_split

    from ei_toolkit.metrics import digits_features, digits_reference
    from ei_toolkit.models.classifier import load_digits_classifier

    train, held = digits_split()
    ref_mean, ref_cov = digits_reference()
    held_mean, held_cov = feature_statistics(digits_features(held))
    assert np.allclose(held_mean, ref_mean, atol=1e-5) and np.allclose(held_cov, ref_cov, atol=1e-5)
    assert digits_frechet_distance(held) == pytest.approx(0, abs=1e-4)
    with torch.no_grad():
        acc = (load_digits_classifier()(held).argmax(1) == labelled_split()[3]).float().mean().item()
    assert acc > 0.95
    assert 1 < digits_frechet_distance(train) < 10  # a different sample of real digits: the data floor (3.9)


def test_bad_arguments_are_named(tmp_path):
    model = load_digits_model()
    cases = [({"n": 0}, "n must be a positive integer"), ({"batch": 0}, "batch must be"),
             ({"shape": (1, 0, 8)}, "shape must be"), ({"seed": -1}, "seed must be"),
             ({"shard_size": 2.5}, "shard_size must be"),
             ({"method": "torchdiffeq:dopri5"}, "adaptive"), ({"method": "torchdiffeq:rk4", "nfe": 6}, "nfe=6"),
             ({"lam": 1.0}, "lam/eta apply to stochastic"), ({"grid": "nope"}, "grid"),
             ({"nfe": 5, "method": "rhork-heun"}, "nfe=5 is not possible")]
    for change, message in cases:
        kw = {"shape": (1, 8, 8), "n": 4, "batch": 2, "shard_size": 10, "progress": False, **change}
        with pytest.raises(ValueError, match=message):
            ei.generate(model, SDE, kw.pop("shape"), kw.pop("n"), tmp_path / "bad", **kw)
    with pytest.raises(ValueError, match="model_id"):
        ei.generate(lambda x, t: x, SDE, (1, 8, 8), 4, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ShardError, match=r"manifest\.json is missing"):
        ei.evaluate_shards(tmp_path)
    with pytest.raises(SystemExit, match="shard_size must be a positive integer"):
        main(["generate", "-n", "4", "--out", str(tmp_path / "cli"), "--shard-size", "0"])
    ei.generate(lambda x, t: 0 * x, SDE, (3,), 4, tmp_path / "fn", model_id="zero", progress=False)
    assert json.loads((tmp_path / "fn" / "manifest.json").read_text())["config"]["model"] == {"id": "zero"}


def test_class_conditional_generation_with_guidance(tmp_path):
    from ei_toolkit.models.classifier import load_digits_classifier

    common = ["-n", "40", "--guidance", "3", "--nfe", "5", "--block", "8", "--shard-size", "20", "--no-progress"]
    assert main(["generate", "--out", str(tmp_path / "a"), "--batch", "8", *common]) == 0
    assert main(["generate", "--out", str(tmp_path / "b"), "--batch", "40", *common]) == 0
    index, x = ei.load_shards(tmp_path / "a")
    assert np.array_equal(x, ei.load_shards(tmp_path / "b")[1])
    with torch.no_grad():
        predicted = load_digits_classifier()(torch.from_numpy(x)).argmax(1).numpy()
    assert (predicted == index % 10).mean() >= 0.9  # sample i is a digit of class i mod 10
    config = json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]
    assert config["condition"] == "label = i mod 10" and "guidance scale 3" in config["model"]["id"]
    with pytest.raises(SystemExit, match=r"guidance scale 3.} there, .*guidance scale 2.} now"):
        main(["generate", "--out", str(tmp_path / "a"), *[a if a != "3" else "2" for a in common]])
    with pytest.raises(ValueError, match="condition and condition_id go together"):
        ei.generate(load_digits_model(), SDE, (1, 8, 8), 4, tmp_path / "c", condition=lambda i: i, **SMALL)
