"""EIScheduler keeps diffusers' scheduler contract: what a pipeline, save/load and a scheduler swap rely on, and the
config options of diffusers' own schedulers, each acting or refused. Each test states the rule it checks."""

import copy
import json
import logging
import tempfile

import numpy as np
import pytest
import torch

import ei_toolkit as ei

diffusers = pytest.importorskip("diffusers")
from diffusers.utils import BaseOutput  # noqa: E402

from ei_toolkit.diffusion import EIScheduler  # noqa: E402
from ei_toolkit.testing import GaussianMixture  # noqa: E402

SDE = ei.DiscreteVP.linear()


def mixture_model(dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = GaussianMixture(means=torch.randn(3, dim, dtype=torch.float64, generator=g),
                           stds=torch.full((3,), 0.3, dtype=torch.float64),
                           weights=torch.full((3,), 1 / 3, dtype=torch.float64))
    return data.eps_model(SDE)


def run(sched, model, x, *, start=None, **set_kw):
    """A pipeline's loop: set_timesteps, then step at each timestep from ``start`` (via the timestep alone)."""
    if not set_kw:
        set_kw = {"num_inference_steps": 10}
    sched.set_timesteps(**set_kw)
    for t in sched.timesteps[start or 0:]:
        x = sched.step(model(x, t.double().expand(x.shape[0])), t, x).prev_sample
    return x


# -- configuration: save, load, print, swap ------------------------------------------------------------------------


def test_config_is_json_and_round_trips_through_save_and_load():
    sched = EIScheduler(method="tab3", grid="quadratic_t", trained_betas=np.linspace(1e-4, 0.02, 50))
    text = repr(sched)  # print(scheduler) serialises the config
    assert "_empty" not in text and json.loads(text.split(" ", 1)[1])["method"] == "tab3"
    with tempfile.TemporaryDirectory() as tmp:
        sched.save_pretrained(tmp)
        again = EIScheduler.from_pretrained(tmp)
    mine = {k: v for k, v in sched.config.items() if k != "_use_default_values"}
    assert dict(again.config) == {**mine, "trained_betas": list(np.linspace(1e-4, 0.02, 50))}
    assert again.betas.tolist() == sched.betas.tolist() and len(again.betas) == 50
    twin = copy.deepcopy(sched)  # pipelines copy schedulers
    twin.set_timesteps(3)
    assert repr(twin) == repr(sched) and len(twin.timesteps) == 3 and sched.num_inference_steps is None


def test_unknown_keys_are_reported_not_dropped(caplog):
    with tempfile.TemporaryDirectory() as tmp:
        EIScheduler().save_config(tmp)
        with open(f"{tmp}/scheduler_config.json") as f:
            data = json.load(f)
        data["unexpected_key"] = 3
        with open(f"{tmp}/scheduler_config.json", "w") as f:
            json.dump(data, f)
        with caplog.at_level(logging.WARNING):
            EIScheduler.from_pretrained(tmp)
    assert "{'unexpected_key': 3} were passed to EIScheduler, but are not expected" in caplog.text
    with caplog.at_level(logging.WARNING):
        EIScheduler.from_config(EIScheduler().config, methd="tab3")
    assert "['methd'] are not EIScheduler options" in caplog.text
    with pytest.raises(TypeError, match="unexpected keyword argument 'methd'"):
        EIScheduler(methd="tab3")


def test_swapping_with_every_compatible_scheduler_keeps_the_config():
    sched = EIScheduler(method="tab2", prediction_type="v_prediction", thresholding=True)
    compatibles = sched.compatibles
    assert diffusers.DPMSolverMultistepScheduler in compatibles and diffusers.DDIMScheduler in compatibles
    for cls in compatibles:
        other = cls.from_config(sched.config)
        back = EIScheduler.from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in sched.config} == dict(sched.config), cls.__name__
    # the other way: a diffusers config gives EIScheduler its schedule and prediction type
    dpm = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                prediction_type="v_prediction")
    ours = EIScheduler.from_config(dpm.config)
    assert ours.prediction == "v"
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), dpm.alphas_cumprod.numpy(), rtol=1e-5)
    assert diffusers.DPMSolverMultistepScheduler.from_config(ours.config).config["solver_order"] == 2


def test_schedule_attributes_match_diffusers():
    assert ei.EIScheduler is EIScheduler and ei.diffusion.EIScheduler is EIScheduler  # the public names
    theirs = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ours = EIScheduler.from_config(theirs.config)
    np.testing.assert_allclose(ours.betas.numpy(), theirs.betas.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), theirs.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-8)
    assert ours.init_noise_sigma == 1.0 and len(ours) == 1000
    x = torch.randn(2, 3, 4, 4)
    assert ours.scale_model_input(x, 999) is x
    x0, noise = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([10, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)
    # fractional timesteps: log alpha interpolated (DiscreteVP); one timestep for all samples
    t = torch.tensor(250.5, dtype=torch.float64)
    a, s = ours.sde.alpha(t), ours.sde.sigma(t)
    torch.testing.assert_close(ours.add_noise(x0, noise, torch.tensor(250.5)), (a * x0 + s * noise).float())
    torch.testing.assert_close(ours.get_velocity(x0, noise, 250.5), (a * noise - s * x0).float())
    with pytest.raises(ValueError, match=r"timesteps must lie in the schedule's domain \[-1, 999\]"):
        ours.add_noise(x0, noise, torch.tensor([2000.0]))


@pytest.mark.parametrize(("method", "order"), [("logrhoab2", 1), ("x0-logrhoab2-pc", 1), ("rhork-heun", 2),
                                               ("rhork-rk4", 4), ("x0-logrhoss3", 3), ("sddim", 1)])
def test_order_is_evaluations_per_step(method, order):
    sched = EIScheduler(method=method, final_sigmas_type="sigma_min")
    sched.set_timesteps(6)
    assert sched.order == order and len(sched.timesteps) == 6 * order and sched.num_inference_steps == 6


def test_methods_come_from_the_registry():
    class Halfway(ei.integrators.DDIM):  # a new method is usable by name as soon as it is registered
        name = "ddim-test-contract"

    ei.register(Halfway())
    try:
        assert EIScheduler(method="ddim-test-contract").method.name == "ddim-test-contract"
    finally:
        del ei.INTEGRATORS["ddim-test-contract"]
    with pytest.raises(ValueError, match=r"unknown method 'ddim-test-contract'; valid methods: ddim"):
        EIScheduler(method="ddim-test-contract")
    with pytest.raises(ValueError, match=r"'torchdiffeq:dopri5' chooses its own evaluations"):
        EIScheduler(method="torchdiffeq:dopri5")
    with pytest.raises(TypeError, match=r"method must be the name of a method in ei.INTEGRATORS"):
        EIScheduler(method=ei.INTEGRATORS["ddim"])


# -- stepping ------------------------------------------------------------------------------------------------------


def test_step_output_is_a_diffusers_output():
    sched = EIScheduler()
    sched.set_timesteps(5)
    x = torch.randn(2, 3)
    out = sched.step(0.1 * x, sched.timesteps[0], x)
    assert isinstance(out, BaseOutput) and out[0] is out.prev_sample and out.to_tuple()[0] is out.prev_sample
    sched.set_timesteps(5)
    plain = sched.step(0.1 * x, sched.timesteps[0], x, return_dict=False)
    assert isinstance(plain, tuple)
    torch.testing.assert_close(plain[0], out.prev_sample, rtol=0, atol=0)
    torch.testing.assert_close(plain[1], out.pred_original_sample, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["logrhoab2", "tab3", "x0-logrhoab2-pc", "x0-logrhoab1-mid-pc-lof", "ipndm",
                                    "rhork-midpoint"])
def test_a_run_is_ei_sample_on_the_same_grid(method):
    model, x = mixture_model(), torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = EIScheduler(method=method, final_sigmas_type="sigma_min" if method.startswith("rhork") else "zero")
    ours = run(sched, model, x)
    tol = 1e-12 if sched.order == 1 else 1e-7  # stage times reach the model as float32, coefficients use float64
    torch.testing.assert_close(ours, ei.sample(model, x, SDE, method=method, grid=sched._grid), rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["logrhoab2", "tab3", "x0-logrhoab2-pc", "rhork-midpoint"])
def test_position_comes_from_the_timestep_and_history_restarts_at_lower_order(method):
    """Starting at timesteps[k] (img2img) is the method on the grid from t_k, without set_begin_index too."""
    model, x = mixture_model(), torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = EIScheduler(method=method, final_sigmas_type="sigma_min" if method.startswith("rhork") else "zero")
    sched.set_timesteps(10)
    grid, k = sched._grid, 4
    expected = ei.sample(model, x, SDE, method=method, grid=grid[k:])
    tol = 1e-12 if sched.order == 1 else 1e-7  # as above
    torch.testing.assert_close(run(sched, model, x, start=k * sched.order), expected, rtol=0, atol=tol)
    sched.set_timesteps(10)
    assert sched.step_index is None and sched.begin_index is None
    sched.set_begin_index(k * sched.order)
    assert sched.begin_index == k * sched.order
    y = x
    for t in sched.timesteps[k * sched.order:]:
        y = sched.step(model(y, t.double().expand(5)), t, y).prev_sample
    assert sched.step_index == len(sched.timesteps)
    torch.testing.assert_close(y, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["rhork-heun", "x0-logrhoss2", "rhork-midpoint"])
def test_singlestep_methods_reach_the_data_with_a_last_ddim_step(method):
    """Their stages would sit below timestep 0 in a last step that ends at the data; they run to timestep 0 and
    the step from there is DDIM's, which returns the data prediction."""
    model, x = mixture_model(), torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = EIScheduler(method=method)
    sched.set_timesteps(6)
    k = sched.order
    assert len(sched.timesteps) == 5 * k + 1 and float(sched.timesteps[-1]) == 0.0
    assert float(sched.timesteps.min()) >= 0.0
    y = x
    for t in sched.timesteps:
        out = sched.step(model(y, t.double().expand(5)), t, y)
        y = out.prev_sample
    torch.testing.assert_close(y, out.pred_original_sample, rtol=0, atol=0)
    to_zero = ei.sample(model, x, SDE, method=method, grid=sched._grid[:-1])  # the same run up to timestep 0
    a, s = SDE.alpha(torch.tensor(0.0, dtype=torch.float64)), SDE.sigma(torch.tensor(0.0, dtype=torch.float64))
    x0 = (to_zero - s * model(to_zero, torch.zeros(5, dtype=torch.float64))) / a
    torch.testing.assert_close(y, x0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"evaluates the model at t = -0.5, below the first training timestep 0"):
        EIScheduler(method="rhork-midpoint").set_timesteps(timesteps=[500, 10, -0.5])


def test_index_for_timestep_takes_the_later_of_repeated_times():
    sched = EIScheduler(method="rhork-heun", final_sigmas_type="sigma_min")  # a step's last stage: the next's first
    sched.set_timesteps(4)
    t = sched.timesteps
    assert float(t[1]) == float(t[2]) and sched.index_for_timestep(t[1]) == 2
    assert sched.index_for_timestep(t[0]) == 0
    sched.set_begin_index(1)  # the middle of a step: refused when stepped
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"runs stage by stage: timesteps\[1\] is stage 1 of a step"):
        sched.step(x, t[1], x)


def test_invalid_timesteps_are_refused():
    sched = EIScheduler()
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(num_inference_steps\) before step\(\)"):
        sched.step(x, 999, x)
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match=r"timestep 12345 is not one of the scheduler's timesteps \(999, "):
        sched.step(x, 12345, x)
    with pytest.raises(TypeError, match=r"timestep must be a number or a tensor of one; got str '999'"):
        sched.step(x, "999", x)
    sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ValueError, match=r"step\(\) got timestep .* but the run is at timesteps\[1\]"):
        sched.step(x, sched.timesteps[3], x)
    with pytest.raises(ValueError, match=r"model_output has shape \(2, 4\); expected \(2, 3\)"):
        sched.step(torch.randn(2, 4), sched.timesteps[1], x)
    for t in sched.timesteps[1:]:
        x = sched.step(x, t, x).prev_sample
    with pytest.raises(RuntimeError, match="past the last of 5 timesteps"):
        sched.step(x, 0, x)


def test_set_timesteps_takes_counts_timesteps_and_sigmas():
    sched = EIScheduler()
    sched.set_timesteps(np.int64(7), device="cpu")
    assert len(sched.timesteps) == 7 and sched.timesteps.dtype == torch.float32
    assert sched.timesteps[0] == 999 and sched._grid[-1] == -1  # "zero": ends at the data
    model, x = mixture_model(), torch.randn(3, 4)
    first = run(EIScheduler(), model, x, num_inference_steps=7)
    again = run(EIScheduler(), model, x, timesteps=sched.timesteps)  # the same float32 times: the same run
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    by_sigma = EIScheduler()
    by_sigma.set_timesteps(sigmas=sched.sigmas[:-1])  # rho = sigma / alpha
    torch.testing.assert_close(by_sigma.timesteps, sched.timesteps, rtol=0, atol=2e-3)
    assert sched.sigmas[-1] == 0 and float(sched.sigmas[0]) == pytest.approx(SDE.rho_max, rel=1e-6)
    custom = EIScheduler()
    custom.set_timesteps(timesteps=[900, 600.5, 10])
    assert custom.timesteps.tolist() == [900, 600.5, 10] and custom._grid[-1] == -1
    with pytest.raises(ValueError, match="pass exactly one of num_inference_steps, timesteps= or sigmas="):
        custom.set_timesteps(5, timesteps=[900, 10])
    with pytest.raises(ValueError, match="timesteps must be strictly decreasing"):
        custom.set_timesteps(timesteps=[10, 900])
    with pytest.raises(ValueError, match=r"num_inference_steps must be a positive integer; got 2.5"):
        custom.set_timesteps(2.5)


def test_stochastic_ddim_draws_from_the_pipelines_generator():
    model, x = mixture_model(), torch.randn(4, 4)

    def sample(seed):
        sched = EIScheduler(method="sddim")
        sched.set_timesteps(8)
        g = torch.Generator().manual_seed(seed)
        y = x
        for t in sched.timesteps:
            y = sched.step(model(y, t.double().expand(4)), t, y, generator=g).prev_sample
        return y

    torch.testing.assert_close(sample(1), sample(1), rtol=0, atol=0)
    assert (sample(1) - sample(2)).abs().max() > 0.1
    sched = EIScheduler(method="sddim", eta=0.0)  # eta = 0: deterministic DDIM
    ddim = EIScheduler(method="ddim", grid="quadratic_t")
    torch.testing.assert_close(run(sched, model, x), run(ddim, model, x), rtol=1e-6, atol=1e-6)


# -- config options that change the result -------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timestep_spacing_gives_dpm_solvers_timesteps(spacing):
    kw = {"timestep_spacing": spacing, "steps_offset": 1 if spacing == "leading" else 0}
    ours, theirs = EIScheduler(**kw), diffusers.DPMSolverMultistepScheduler(**kw)
    for n in (4, 10, 25):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert ours.timesteps.tolist() == theirs.timesteps.float().tolist()


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_sigma_spacings_follow_diffusers(flag):
    ours, theirs = EIScheduler(method="ddim", **{flag: True}), diffusers.DPMSolverMultistepScheduler(**{flag: True})
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    # the same sigmas (rho) up to the interpolation of log alpha vs. log sigma between integer timesteps
    np.testing.assert_allclose(ours.sigmas[:-1].numpy(), theirs.sigmas[:-1].numpy(), rtol=2e-2)
    default = EIScheduler(method="ddim")  # its own grid: quadratic in t
    default.set_timesteps(8)
    assert not torch.allclose(ours.timesteps, default.timesteps)


def test_prediction_types_are_the_same_model():
    """An exact model given as eps, v or x0 gives the same run."""
    eps_model, x = mixture_model(), torch.randn(3, 4, dtype=torch.float64)

    def as_(kind):
        def model(y, t):
            a, s = (v.view(-1, 1) for v in (SDE.alpha(t), SDE.sigma(t)))
            e = eps_model(y, t)
            x0 = (y - s * e) / a
            return {"epsilon": e, "v_prediction": a * e - s * x0, "sample": x0}[kind]
        return model

    runs = [run(EIScheduler(prediction_type=k, final_sigmas_type="sigma_min"), as_(k), x)
            for k in ("epsilon", "v_prediction", "sample")]
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(runs[2], runs[0], rtol=1e-9, atol=1e-9)


def test_thresholding_and_clipping_act_on_the_data_prediction():
    def wild(y, t):
        return torch.full_like(y, 5.0)  # x0 far outside [-1, 1]

    x = torch.randn(2, 64)
    thresholded = EIScheduler(prediction_type="sample", thresholding=True, sample_max_value=2.0)
    thresholded.set_timesteps(4)
    out = thresholded.step(wild(x, None), thresholded.timesteps[0], x)
    # diffusers' rule: s = clamp(quantile(|x0|), 1, sample_max_value) = 2, x0 -> clamp(x0, -2, 2) / 2 = 1
    torch.testing.assert_close(out.pred_original_sample, torch.ones_like(x))
    theirs_in = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 4
    ref = diffusers.DDPMScheduler(thresholding=True, sample_max_value=2.0)._threshold_sample(theirs_in)
    torch.testing.assert_close(thresholded._threshold(theirs_in), ref)
    clipped = EIScheduler(prediction_type="sample", clip_sample=True, clip_sample_range=0.5)
    assert float(run(clipped, wild, x).abs().max()) <= 0.5 + 1e-6
    assert float(run(EIScheduler(prediction_type="sample"), wild, x).min()) > 4.9  # without: x0 = 5


def test_learned_variance_channels_are_dropped_and_half_precision_kept():
    sched = EIScheduler(variance_type="learned_range")
    sched.set_timesteps(3)
    x = torch.randn(2, 3, 4, 4)
    plain = EIScheduler()
    plain.set_timesteps(3)
    eps = 0.1 * x
    out = sched.step(torch.cat([eps, torch.randn_like(x)], dim=1), sched.timesteps[0], x).prev_sample
    torch.testing.assert_close(out, plain.step(eps, plain.timesteps[0], x).prev_sample)
    half = EIScheduler()
    half.set_timesteps(3)
    y = x.half()
    for t in half.timesteps:
        y = half.step(0.1 * y, t, y).prev_sample
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_bad_options_are_refused():
    for kw, msg in [({"use_karras_sigmas": True, "use_beta_sigmas": True}, "only one of use_karras_sigmas"),
                    ({"timestep_spacing": "middle"}, "timestep_spacing must be one of linspace, leading, trailing"),
                    ({"final_sigmas_type": "denoise_to_zero"}, "final_sigmas_type must be 'zero' or 'sigma_min'"),
                    ({"variance_type": "other"}, "variance_type must be one of"),
                    ({"grid": "cosine"}, "unknown grid 'cosine'"),
                    ({"lam": 0.5}, r"lam/eta apply to stochastic methods only; 'logrhoab2' is deterministic"),
                    ({"beta_schedule": "sigmoid"}, "unsupported beta_schedule 'sigmoid'"),
                    ({"prediction_type": "noise_and_sample"}, "unsupported prediction_type 'noise_and_sample'"),
                    ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio must lie")]:
        with pytest.raises(ValueError, match=msg):
            EIScheduler(**kw)


# -- zero terminal SNR ---------------------------------------------------------------------------------------------


def test_rescale_betas_zero_snr_starts_at_infinite_noise():
    ours = EIScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    theirs = diffusers.DDIMScheduler(rescale_betas_zero_snr=True)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), theirs.alphas_cumprod.numpy(), rtol=1e-4, atol=1e-7)
    assert ours.alphas_cumprod[-1] == 0 and ours.sde.t_terminal == 999
    ours.set_timesteps(10)
    assert ours.timesteps[0] == 999 and torch.isinf(ours.sigmas[0])
    sde, m, s = ours.sde, 0.5, 0.2

    def v_model(y, t):
        a, sg = (u.to(y).view(-1, 1) for u in sde.alpha_sigma(t.double()))
        x0 = m + a * s * s * (y - a * m) / (a * a * s * s + sg * sg)
        return a * (y - a * x0) / sg - sg * x0

    x = torch.randn(64, 2, dtype=torch.float64)
    single = EIScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", method="x0-logrhoss2")
    out = run(single, v_model, x, num_inference_steps=13)  # infinite noise, 11 steps of 2 stages, DDIM's last step
    assert len(single.timesteps) == 1 + 11 * 2 + 1 and single.timesteps[0] == 999 and single.timesteps[-1] == 0
    assert float((out - (m + s * x)).abs().max()) < 0.05
    for method in ("logrhoab2", "ddim", "x0-logrhoab2"):
        sched = EIScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", method=method)
        out = run(sched, v_model, x, num_inference_steps=25)
        ref = ei.sample(v_model, x, sde, prediction="v", method=method, grid=sched._grid)  # starts at t_terminal
        torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)  # float32 timesteps vs float64 grid
        assert float((out - (m + s * x)).abs().max()) < 0.1  # the exact flow: x0 = m + s x
    eps_sched = EIScheduler(rescale_betas_zero_snr=True)
    eps_sched.set_timesteps(5)
    with pytest.raises(ValueError, match="needs a model that predicts x0 or v: prediction='eps'"):
        eps_sched.step(x, eps_sched.timesteps[0], x)
    assert eps_sched.step_index is None  # a refused step does not move the run
    eps_sched.set_begin_index(1)  # below infinite noise an eps-model is fine (img2img)
    assert torch.isfinite(eps_sched.step(0 * x, eps_sched.timesteps[1], x).prev_sample).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_run_on_the_gpu_equals_the_cpu_run():
    model, x = mixture_model(), torch.randn(3, 4)
    cpu = run(EIScheduler(), model, x)
    sched = EIScheduler()
    sched.set_timesteps(10, device="cuda")
    y = x.cuda()
    for t in sched.timesteps:  # timesteps on the device: read once, at the first step
        y = sched.step(model(y.double().cpu(), t.double().cpu().expand(3)).float().cuda(), t, y).prev_sample
    torch.testing.assert_close(y.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_zero_snr_ddim_equals_diffusers_ddim():
    """DDIM from infinite noise with trailing timesteps (Lin et al.'s recipe) is diffusers' DDIMScheduler step for
    step: at alpha = 0 both use x0 = -v, eps = x."""
    kw = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    ours = EIScheduler(method="ddim", **kw)
    theirs = diffusers.DDIMScheduler(set_alpha_to_one=True, clip_sample=False, **kw)
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(3, 3, generator=g) * 0.3

    def v_model(y, t):  # any smooth model will do: both must take the same steps
        return torch.tanh(y @ weights) * (1 + t.float().view(-1, 1) / 1000)

    outs = []
    for sched in (ours, theirs):
        sched.set_timesteps(8)
        y = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
        for t in sched.timesteps:
            y = sched.step(v_model(y, t.reshape(1).expand(4)), t, y).prev_sample
        outs.append(y)
    assert ours.timesteps.tolist() == theirs.timesteps.float().tolist()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


# -- EMS: a method that needs the model's statistics -----------------------------------------------------------


@pytest.fixture(scope="module")
def ems_statistics(tmp_path_factory):
    model = mixture_model()
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    stats = ei.model_statistics(model, x, SDE, nodes=40)
    return model, stats, stats.save(tmp_path_factory.mktemp("stats") / "stats.pt")


@pytest.mark.parametrize("method", ["ems-logrhoab1-pc", "ems-logrhoab2"])
def test_ems_runs_as_ei_sample_on_the_same_grid(ems_statistics, method):
    """With statistics= the EMS methods step like any multistep method: the same states as ei.sample with the
    EMSAdams object (its last step into the data the data prediction), also when the run starts mid-schedule."""
    model, stats, path = ems_statistics
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = EIScheduler(method=method, statistics=str(path))
    points, corrector = int(method[12]) + 1, method.endswith("-pc")
    assert sched.method.name == method and sched.order == 1
    ems = ei.EMSAdams(stats, points, corrector)
    ours = run(sched, model, x)
    assert float(sched._grid[-1]) == SDE.t0  # final_sigmas_type="zero": the last step reaches the data
    torch.testing.assert_close(ours, ei.sample(model, x, SDE, method=ems, grid=sched._grid), rtol=0, atol=1e-12)
    k = 3
    torch.testing.assert_close(run(sched, model, x, start=k), ei.sample(model, x, SDE, method=ems,
                                                                        grid=sched._grid[k:]), rtol=0, atol=1e-12)


def test_ems_statistics_travel_with_save_pretrained(ems_statistics, tmp_path):
    """save_pretrained writes the statistics next to the config and names them relatively; from_pretrained reads
    them from the folder wherever it was moved; the live scheduler keeps its own path."""
    model, stats, path = ems_statistics
    sched = EIScheduler(method="ems-logrhoab1-pc", statistics=str(path))
    sched.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "scheduler_config.json").read_text())
    assert saved["statistics"] == "ems_statistics.pt" and sched.config.statistics == str(path)
    (tmp_path / "a").rename(tmp_path / "b")
    again = EIScheduler.from_pretrained(tmp_path / "b")
    assert again.method.statistics.digest == stats.digest
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(run(again, model, x), run(sched, model, x), rtol=0, atol=0)


def test_ems_options_are_checked(ems_statistics, tmp_path):
    _, stats, path = ems_statistics
    with pytest.raises(ValueError, match="needs statistics="):
        EIScheduler(method="ems-logrhoab1-pc")
    with pytest.raises(ValueError, match="does not use model statistics"):
        EIScheduler(method="logrhoab2", statistics=str(path))
    with pytest.raises(ValueError, match="no such file"):
        EIScheduler(method="ems-logrhoab1", statistics=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="estimated for the SDE"):
        EIScheduler(method="ems-logrhoab1", statistics=str(path), beta_schedule="scaled_linear")
    with pytest.raises(TypeError, match="statistics must be the path"):
        EIScheduler(method="ems-logrhoab1", statistics=stats)


def test_ems_step_refuses_samples_of_another_shape(ems_statistics):
    """Issue 24: statistics for samples of shape (4,) were broadcast onto (1, 4) samples step by step (ei.solve
    refused them); now step() refuses them too."""
    _, _, path = ems_statistics
    sched = EIScheduler(method="ems-logrhoab1", statistics=str(path))
    sched.set_timesteps(5)
    x = torch.randn(2, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"samples shaped \(1, 4\), but these model statistics are for samples shaped"
                                         r" \(4,\)"):
        for t in sched.timesteps:
            x = sched.step(torch.zeros_like(x), t, x).prev_sample


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_dynamic_thresholding_ratio_takes_diffusers_range(ratio):
    """diffusers takes any quantile in [0, 1]; 0 was refused. The data prediction matches diffusers' rule."""
    sched = EIScheduler(prediction_type="sample", thresholding=True, dynamic_thresholding_ratio=ratio,
                        sample_max_value=2.0)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 4
    theirs = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=2.0)
    torch.testing.assert_close(sched._threshold(x0), theirs._threshold_sample(x0))
    with pytest.raises(ValueError, match=r"dynamic_thresholding_ratio must lie in \[0, 1\]"):
        EIScheduler(thresholding=True, dynamic_thresholding_ratio=ratio + 1.5)
