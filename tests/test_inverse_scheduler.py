"""EIInverseScheduler (issue 22): the forward plans stepped one model evaluation at a time, as ei.invert runs them, in
a hand-written inversion loop and in diffusers' StableDiffusionDiffEditPipeline (offline, tiny components)."""

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.testing.problems import get_problem

diffusers = pytest.importorskip("diffusers")
from ei_toolkit.diffusion import EIInverseScheduler  # noqa: E402


def loop(scheduler, model, x, steps):
    """A hand-written inversion loop; the model reads the float64 time of each evaluation (the scheduler's float32
    timesteps would move it by up to 3e-5 timesteps, 1e-7 in the result)."""
    scheduler.set_timesteps(steps)
    for i, t in enumerate(scheduler.timesteps):
        exact_t = scheduler._plan.eval_times[i]
        x = scheduler.step(model(x, torch.full((x.shape[0],), float(exact_t), dtype=x.dtype)), t, x).prev_sample
    return x


@pytest.mark.parametrize("method", [None, "ddim", "logrhoab2", "x0-logrhoab1", "logrhoab1-pc", "x0-logrhoab1-mid-pc",
                                    "ipndm"])
def test_a_hand_written_loop_equals_ei_invert(method):
    """Step for step the plan ei.invert runs (float64; the scheduler's float32 timesteps are not used as times)."""
    sched = EIInverseScheduler.from_config(diffusers.DDIMScheduler(beta_schedule="linear").config, method=method)
    sde = sched.sde
    mix = get_problem("gmm16")
    model = mix.eps_model(sde)
    x0 = mix.sample_marginal(sde, sde.t_min, 3, torch.Generator().manual_seed(0))
    ours = loop(sched, model, x0, 12)
    grid = sched._grid
    want = ei.invert(model, x0, sde, method=method or ei.sampling.default_inversion_method(12)[0], grid=grid)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    assert float(sched.timesteps[0]) == sde.t_min and len(sched.timesteps) == 12
    assert bool((sched.timesteps[1:] > sched.timesteps[:-1]).all())


def test_v_and_sample_predictions_are_converted_like_ei_invert():
    sde = ei.DiscreteVP.linear()
    mix = get_problem("gmm16")
    eps = mix.eps_model(sde)
    x0 = mix.sample_marginal(sde, sde.t_min, 2, torch.Generator().manual_seed(1))

    def v_model(x, t):  # v = alpha eps - sigma x0 (Salimans & Ho 2022)
        a, s = sde.alpha_sigma(t.to(torch.float64))
        e = eps(x, t)
        return a[:, None] * e - s[:, None] * (x - s[:, None] * e) / a[:, None]

    sched = EIInverseScheduler(prediction_type="v_prediction", method="logrhoab2")
    torch.testing.assert_close(loop(sched, v_model, x0, 10), loop(EIInverseScheduler(method="logrhoab2"), eps, x0, 10),
                               rtol=1e-10, atol=1e-10)


def test_save_and_load_round_trip(tmp_path):
    sched = EIInverseScheduler(method="x0-logrhoab1", grid="quadratic_t", beta_schedule="scaled_linear",
                               beta_start=0.00085, beta_end=0.012)
    sched.save_pretrained(tmp_path)
    back = EIInverseScheduler.from_pretrained(tmp_path)
    assert back.config.method == "x0-logrhoab1" and back.config.grid == "quadratic_t"
    sched.set_timesteps(7)
    back.set_timesteps(7)
    torch.testing.assert_close(sched.timesteps, back.timesteps, rtol=0, atol=0)


def test_refusals_name_what_was_expected():
    with pytest.raises(ValueError, match=r"steps deterministic one-evaluation-per-step .* 'rhork-rk4' is not one"):
        EIInverseScheduler(method="rhork-rk4")
    with pytest.raises(ValueError, match=r"'sddim' is not one"):
        EIInverseScheduler(method="sddim")
    with pytest.raises(ValueError, match=r"unknown grid 'foo'"):
        EIInverseScheduler(grid="foo")
    sched = EIInverseScheduler()
    x = torch.zeros(1, 2)
    with pytest.raises(RuntimeError, match=r"call set_timesteps before step"):
        sched.step(x, 0, x)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match=r"step 0 is at timestep 0; got 500"):
        sched.step(x, 500, x)
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match=r"the run has 3 steps"):
        sched.step(x, sched.timesteps[-1], x)


def test_diffedit_pipeline_inverts_with_it(tmp_path):
    """StableDiffusionDiffEditPipeline.invert with inverse_scheduler=EIInverseScheduler, a tiny offline pipeline
    whose UNet returns the eps of a known latent point x0: along the exact ODE eps stays constant, so every state the
    scheduler returns is alpha_t x0 + sigma_t c with c = (z - alpha_min x0) / sigma_min, z the image's latents
    (every exponential method is exact for constant eps)."""
    from test_pipelines import exact_unet, sd_components

    pytest.importorskip("transformers")
    tok = _tokenizer(tmp_path)
    ddim = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    parts = sd_components(tok, ddim)
    inverse = EIInverseScheduler.from_config(ddim.config, method="logrhoab2")
    pipe = diffusers.StableDiffusionDiffEditPipeline(**parts, inverse_scheduler=inverse)
    pipe.set_progress_bar_config(disable=True)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    seen = []
    unet = exact_unet(pipe.unet, inverse.alphas_cumprod.double().numpy(), x0)
    forward = unet.forward

    def recording(sample, timestep, *args, **kwargs):
        seen.append(sample[:1].detach().clone())
        return forward(sample, timestep, *args, **kwargs)

    unet.forward = recording
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = pipe.invert(prompt="a cat", image=image, num_inference_steps=6, inpaint_strength=1.0, guidance_scale=1.0)
        # DiffEdit's noise regularisation indexes alphas_cumprod by timestep: integer timesteps run it
        pipe.inverse_scheduler = EIInverseScheduler.from_config(ddim.config, timestep_spacing="leading")
        reg = pipe.invert(prompt="a cat", image=image, num_inference_steps=4, inpaint_strength=1.0,
                          guidance_scale=1.0, num_reg_steps=1, num_auto_corr_rolls=1, lambda_auto_corr=1e-3,
                          lambda_kl=1e-3)  # small weights: the exact UNet's eps is far from N(0, I)
    assert reg.latents.shape[1] == 4 and bool(torch.isfinite(reg.latents).all())
    seen = seen[:6]  # the first inversion's evaluations
    latents = out.latents  # (batch, steps, ...) ordered by increasing noise, reversed: the noisiest first
    assert latents.shape[1] == 6
    z = seen[0].double()
    sde = inverse.sde
    grid = inverse._grid
    a, s = sde.alpha_sigma(grid)
    c = (z - a[0] * x0) / s[0]
    states = list(reversed(latents[0].unbind(0)))  # the state after step k is at grid[k + 1]
    for k, state in enumerate(states):
        want = a[k + 1] * x0 + s[k + 1] * c
        # float32 pipeline: the UNet reads float32 timesteps (t ~ 1000 rounded by 6e-5, which moves alpha and sigma
        # by ~1e-6 relative per evaluation) and each step rounds the state ~10 times (1.2e-6 relative); 6 steps
        scale = float(want.abs().max())
        np.testing.assert_allclose(state.double().numpy(), want[0].numpy(), rtol=0, atol=6 * 2.5e-6 * scale)


def _tokenizer(tmp_path):
    import json
    import string

    import transformers

    letters = list(string.ascii_lowercase)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*letters, *(c + "</w>" for c in letters), "ca", "cat</w>"]:
        vocab.setdefault(token, len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=12)


def test_timestep_spacing_gives_integer_timesteps_as_ddim_inverse_does():
    """With timestep_spacing the timesteps are int64 (pipelines index alphas_cumprod with them; DiffEdit's
    regularisation does); "leading" is DDIMInverseScheduler's own set, and the run still equals ei.invert."""
    theirs = diffusers.DDIMInverseScheduler(timestep_spacing="leading")
    theirs.set_timesteps(10)
    ours = EIInverseScheduler.from_config(diffusers.DDIMScheduler(timestep_spacing="leading").config, method="ddim")
    assert ours.config.timestep_spacing == "leading"
    ours.set_timesteps(10)
    assert ours.timesteps.dtype == torch.int64 and ours.timesteps.tolist() == theirs.timesteps.tolist()
    for spacing in ("linspace", "trailing"):
        s = EIInverseScheduler(timestep_spacing=spacing)
        s.set_timesteps(10)
        t = s.timesteps
        assert t.dtype == torch.int64 and int(t[0]) == 0 and bool((t[1:] > t[:-1]).all()) and float(s._grid[-1]) == 999
    sde = ours.sde
    model = get_problem("gmm16").eps_model(sde)
    x0 = get_problem("gmm16").sample_marginal(sde, sde.t_min, 2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(loop(ours, model, x0, 10), ei.invert(model, x0, sde, method="ddim", grid=ours._grid),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"timestep_spacing must be one of linspace, leading, trailing"):
        EIInverseScheduler(timestep_spacing="middle")
    with pytest.raises(ValueError, match=r"give grid .* or timestep_spacing .*, not both"):
        EIInverseScheduler(grid="uniform_t", timestep_spacing="leading")
