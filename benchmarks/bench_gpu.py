"""GPU benchmark: sampling a diffusers UNet2DModel of realistic size (random weights) with ei_toolkit tab3 at
NFE 10 against diffusers DPMSolverMultistepScheduler at NFE 10, in the same run.

* time per sample (median of interleaved repeats, CUDA-synchronised);
* sampler overhead: total minus the same number of bare UNet forwards, as a share of the total;
* peak GPU memory of each.

Configurations: batch 64 at 32x32 (the DDPM CIFAR-10 UNet layout, 35.7M parameters) and batch 8 at
256x256 (the DDPM LSUN-church layout, 113.7M parameters); float32 and float16.
Run: python benchmarks/bench_gpu.py (needs CUDA and diffusers; writes benchmarks/results/gpu.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import ei_toolkit as ei

CONFIGS = {
    "32x32, batch 64": dict(batch=64, unet=dict(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))),
    "256x256, batch 8": dict(batch=8, unet=dict(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))),
}
NFE = 10
REPEATS = 7


def timed(fn) -> tuple[float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    s = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - s, torch.cuda.max_memory_allocated() / 2**30


def measure(name: str, cfg: dict, dtype: torch.dtype, dev: torch.device) -> str:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**cfg["unet"]).to(dev, dtype).eval()
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    b, size = cfg["batch"], cfg["unet"]["sample_size"]
    x = torch.randn(b, 3, size, size, device=dev, dtype=dtype)
    dm = ei.diffusion.from_diffusers(unet, diffusers.DDPMScheduler().config)
    sched = diffusers.DPMSolverMultistepScheduler()
    t_fixed = torch.full((b,), 500.0, device=dev, dtype=dtype)

    @torch.no_grad()
    def ours() -> None:
        dm.sample(x, method="tab3", nfe=NFE)

    @torch.no_grad()
    def theirs() -> None:
        sched.set_timesteps(NFE, device=dev)
        y = x
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y).prev_sample

    @torch.no_grad()
    def bare() -> None:
        y = x
        for _ in range(NFE):
            y = unet(y, t_fixed).sample

    fns = {"ours": ours, "theirs": theirs, "bare": bare}
    for f in fns.values():  # warm-up (cuDNN autotuning, plan cache)
        f()
    res: dict[str, list[float]] = {k: [] for k in fns}
    mem = {}
    for _ in range(REPEATS):
        for k, f in fns.items():
            dt, m = timed(f)
            res[k].append(dt)
            mem[k] = m
    med = {k: statistics.median(v) for k, v in res.items()}
    share = {k: max(0.0, (med[k] - med["bare"]) / med[k]) for k in ("ours", "theirs")}
    return (f"| {name} | {str(dtype).replace('torch.', '')} | {params:.1f}M | {1e3 * med['ours'] / b:.2f} | "
            f"{1e3 * med['theirs'] / b:.2f} | {med['ours'] / med['theirs']:.3f} | {100 * share['ours']:.2f}% | "
            f"{100 * share['theirs']:.2f}% | {mem['ours']:.2f} | {mem['theirs']:.2f} |")


def sampler_share(name: str, cfg: dict, dtype: torch.dtype, dev: torch.device) -> str:
    """The sampler's own time per step, isolated: ei.sample with a trivial model (0.1 * x, one kernel) on the
    same tensor, against one UNet forward; share = sampler / (UNet forward + sampler)."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**cfg["unet"]).to(dev, dtype).eval()
    b, size = cfg["batch"], cfg["unet"]["sample_size"]
    x = torch.randn(b, 3, size, size, device=dev, dtype=dtype)
    sde = ei.DiscreteVP.linear()
    t = torch.full((b,), 500.0, device=dev, dtype=dtype)
    with torch.no_grad():
        def trivial_model() -> None:
            for _ in range(NFE):
                0.1 * x

        def trivial_sample() -> None:
            ei.sample(lambda y, tt: 0.1 * y, x, sde, method="tab3", nfe=NFE)

        def forward() -> None:
            unet(x, t)

        for f in (trivial_model, trivial_sample, forward):
            f()
        med = {f.__name__: statistics.median(timed(f)[0] for _ in range(15)) for f in
               (trivial_model, trivial_sample, forward)}
    per_step = (med["trivial_sample"] - med["trivial_model"]) / NFE
    share = per_step / (med["forward"] + per_step)
    return (f"| {name} | {str(dtype).replace('torch.', '')} | {1e3 * per_step:.3f} | {1e3 * med['forward']:.2f} | "
            f"{100 * share:.2f}% |")


def graph_check(dev: torch.device) -> str:
    """The whole tab3 loop (10 UNet forwards + updates) captured in ONE CUDA graph and replayed: possible
    only because the loop never synchronises with the host; replay equals eager."""
    import diffusers

    from ei_toolkit.integrators import plan_for

    cfg = CONFIGS["32x32, batch 64"]
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**cfg["unet"]).to(dev, torch.float16).eval()
    dm = ei.diffusion.from_diffusers(unet, diffusers.DDPMScheduler().config)
    sde, integ = dm.sde, ei.INTEGRATORS["tab3"]
    plan = plan_for(integ, sde, ei.time_grid(sde, integ.default_grid, NFE, sde.t_max, sde.t_min))
    x = torch.randn(64, 3, 32, 32, device=dev, dtype=torch.float16)
    with torch.no_grad():
        eager = plan.run(x, ei.ModelEvaluator(dm.model, sde).bind(plan.eval_times, x))
        static_x = x.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up on a side stream, as CUDA graph capture requires
            plan.run(static_x, ei.ModelEvaluator(dm.model, sde).bind(plan.eval_times, x))
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = plan.run(static_x, ei.ModelEvaluator(dm.model, sde).bind(plan.eval_times, x))
        g.replay()
        torch.cuda.synchronize()
        diff = (static_out.float() - eager.float()).abs().max().item()
        te = statistics.median(timed(lambda: plan.run(
            x, ei.ModelEvaluator(dm.model, sde).bind(plan.eval_times, x)))[0] for _ in range(15))
        tg = statistics.median(timed(g.replay)[0] for _ in range(15))
    return (f"tab3, NFE {NFE}, 32x32 batch 64 float16: eager {1e3 * te:.1f} ms, one CUDA graph replay "
            f"{1e3 * tg:.1f} ms ({te / tg:.2f}x); max |graph - eager| = {diff:.1e}")


def compiled_check(dev: torch.device, mode: str | None = "reduce-overhead", dtype: torch.dtype = torch.float16) -> str:
    """ei.sample on a torch.compile'd UNet: same samples as eager, and its speed."""
    import diffusers

    cfg = CONFIGS["32x32, batch 64"]
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**cfg["unet"]).to(dev, dtype).eval()
    x = torch.randn(64, 3, 32, 32, device=dev, dtype=dtype)
    sched = diffusers.DDPMScheduler().config
    eager = ei.diffusion.from_diffusers(unet, sched)
    start = time.perf_counter()
    compiled = ei.diffusion.from_diffusers(torch.compile(unet, mode=mode), sched)
    with torch.no_grad():
        for _ in range(3):  # compile + record graphs
            out_c = compiled.sample(x, method="tab3", nfe=NFE)
        compile_s = time.perf_counter() - start
        out_e = eager.sample(x, method="tab3", nfe=NFE)
        te = [timed(lambda: eager.sample(x, method="tab3", nfe=NFE))[0] for _ in range(REPEATS)]
        tc = [timed(lambda: compiled.sample(x, method="tab3", nfe=NFE))[0] for _ in range(REPEATS)]
    diff = ((out_c.float() - out_e.float()).abs().max() / out_e.float().abs().max()).item()
    return (f"mode={mode}: compile + warm-up {compile_s:.0f} s; eager {1e3 * statistics.median(te) / 64:.3f} "
            f"ms/sample, compiled {1e3 * statistics.median(tc) / 64:.3f} ms/sample; max |compiled - eager| / "
            f"max |eager| = {diff:.1e} ({str(dtype).replace('torch.', '')})")


def main() -> None:
    import diffusers

    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    dev = torch.device("cuda")
    lines = ["# GPU sampling benchmark", "",
             f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}, diffusers {diffusers.__version__}. "
             f"Random-weight diffusers UNet2DModel, NFE {NFE}, median of {REPEATS} interleaved repeats; peak memory "
             "is torch.cuda.max_memory_allocated during one run. Command: `python benchmarks/bench_gpu.py`.", "",
             "| config | dtype | UNet params | ei tab3 (ms/sample) | diffusers DPM++2M (ms/sample) | ratio | "
             "ei overhead share | diffusers overhead share | ei peak GiB | diffusers peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, cfg in CONFIGS.items():
        for dtype in (torch.float32, torch.float16):
            lines.append(measure(name, cfg, dtype, dev))
            print(lines[-1], flush=True)
            torch.cuda.empty_cache()
    lines += ["", "## The sampler's own cost per step (trivial model on the same tensor) against one UNet forward",
              "", "| config | dtype | sampler per step (ms) | UNet forward (ms) | sampler share |",
              "|---|---|---|---|---|"]
    for name, cfg in CONFIGS.items():
        for dtype in (torch.float32, torch.float16):
            lines.append(sampler_share(name, cfg, dtype, dev))
            print(lines[-1], flush=True)
    lines += ["", "## CUDA graphs", "", graph_check(dev)]
    print(lines[-1], flush=True)
    if "--compile" in sys.argv:
        # in a child process: a crash inside torch.compile must not take the measurements above with it
        import subprocess

        lines += ["", "## torch.compile (mode='reduce-overhead': CUDA graphs) of the 32x32 UNet, float16", ""]
        child = subprocess.run([sys.executable, "-c", "import torch, bench_gpu as b; "
                                "print(b.compiled_check(torch.device('cuda')))"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=400)
        tail = (child.stdout.strip().splitlines() or [""])[-1]
        lines.append(tail if child.returncode == 0 else
                     f"torch.compile run failed with exit code {child.returncode}: "
                     f"{(child.stderr.strip().splitlines() or ['(no message)'])[-1]}")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "gpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
