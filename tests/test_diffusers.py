"""diffusers integration: the SDE and model from a UNet + scheduler config, EIScheduler inside a real
pipeline built from a small randomly initialised UNet (no downloads), guidance, thresholding."""

import numpy as np
import pytest
import torch

import ei_toolkit as ei

diffusers = pytest.importorskip("diffusers")
from ei_toolkit.diffusion import EIScheduler, classifier_free_guidance, from_diffusers  # noqa: E402


def small_unet(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8)
    args.update(kw)
    return diffusers.UNet2DModel(**args).eval()


def test_scheduler_configs_give_the_right_schedules():
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        theirs = diffusers.DDPMScheduler(beta_schedule=schedule)
        sde = ei.diffusion.sde_from_scheduler_config(theirs.config)
        np.testing.assert_allclose(sde.alphas_cumprod.numpy(), theirs.alphas_cumprod.double().numpy(), rtol=1e-5,
                                   atol=1e-10)  # diffusers computes in float32
    with pytest.raises(ValueError, match=r"unsupported beta_schedule 'sigmoid'; supported: linear"):
        ei.diffusion.sde_from_scheduler_config({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match=r"unsupported prediction_type 'flow'"):
        from_diffusers(small_unet(), {"prediction_type": "flow"})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ei_scheduler_in_a_ddpm_pipeline_equals_ei_sample(dtype):
    unet = small_unet().to(dtype)
    # an eps method (the error analysis below assumes the random UNet's dynamics do not amplify round-off; the
    # data-prediction corrector of the default does, by far more than one ulp, with these random weights)
    sched = EIScheduler(num_train_timesteps=1000, method="logrhoab2")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    nfe = 10
    with torch.no_grad():
        images = pipe(batch_size=2, num_inference_steps=nfe, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    # the same run through ei.sample: the pipeline's initial noise (drawn in the UNet's dtype), same coefficients
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    dm = from_diffusers(unet, sched.config)
    with torch.no_grad():
        sol = ei.solve(dm.model, x, dm.sde, prediction=dm.prediction, method="logrhoab2", grid="uniform_logrho",
                       nfe=nfe, t_end=-1.0, trajectory=True)
    ours = ((sol.x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    # Error analysis: both runs apply the same float64 coefficients to the same model outputs, each step a few
    # roundings of the state; the random UNet drives |x| to hundreds, so the bound scales with the largest state
    # of the trajectory: 4 roundings per step, nfe steps, unit round-off u, halved by the image map x / 2 + 1/2.
    # In float64 the two runs are the same operations (0 difference seen); in float32 the pipeline's step
    # order of operations differs from the runner's (1e-5 seen where |x| reaches ~500, i.e. below one ulp).
    scale = float(sol.trajectory.abs().max())
    atol = 4 * nfe * torch.finfo(dtype).eps / 2 * scale / 2
    np.testing.assert_allclose(images, ours, rtol=0, atol=atol)
    assert atol < (1e-10 if dtype == torch.float64 else 1e-2)  # the bound stays meaningful


def test_ei_scheduler_replaces_dpm_solver_from_its_config():
    dpm = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                prediction_type="v_prediction")
    sched = EIScheduler.from_config(dpm.config, method="tab3")
    assert sched.config.prediction_type == "v_prediction" and sched.prediction == "v"
    sched.set_timesteps(7)
    assert len(sched.timesteps) == 7 and float(sched.timesteps[0]) == 999.0
    x = torch.randn(1, 1, 8, 8)
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x).prev_sample
    assert torch.isfinite(x).all()
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        sched.step(x, 0, x)
    with pytest.raises(ValueError, match=r"plan-based methods one model evaluation at a time; 'torchdiffeq:dopri5' "
                                         r"chooses its own evaluations"):
        EIScheduler(method="torchdiffeq:dopri5")


def test_classifier_free_guidance_is_one_batched_forward():
    calls = []

    def cond_model(x, t, c):
        calls.append(x.shape[0])
        return x * c.view(-1, 1)

    x, t = torch.ones(3, 2), torch.zeros(3)
    guided = classifier_free_guidance(cond_model, torch.tensor([2.0]), torch.tensor([0.5]), scale=3.0)
    out = guided(x, t)
    assert calls == [6]  # one forward of twice the batch
    torch.testing.assert_close(out, torch.full((3, 2), 0.5 + 3.0 * (2.0 - 0.5)))
    with pytest.raises(ValueError, match="needs an unconditional input"):
        classifier_free_guidance(cond_model, torch.tensor([2.0]), None, 3.0)


def test_conditional_unet_with_guidance():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                          layers_per_block=1, cross_attention_dim=12, norm_num_groups=8,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                          attention_head_dim=4).eval()
    cond, uncond = torch.randn(1, 3, 12), torch.zeros(1, 3, 12)
    dm = from_diffusers(unet, diffusers.DDIMScheduler().config, encoder_hidden_states=cond,
                        negative_encoder_hidden_states=uncond, guidance_scale=5.0)
    with torch.no_grad():
        out = dm.sample(torch.randn(2, 1, 8, 8), nfe=5)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="needs negative_encoder_hidden_states"):
        from_diffusers(unet, diffusers.DDIMScheduler().config, encoder_hidden_states=cond, guidance_scale=5.0)


def test_dtype_the_model_cannot_take():
    dm = from_diffusers(small_unet(), diffusers.DDPMScheduler().config)
    with pytest.raises(TypeError, match=r"the UNet's parameters are torch.float32 but x is torch.float64"):
        dm.sample(torch.randn(1, 1, 8, 8, dtype=torch.float64), nfe=2)


def test_x0_clipping_and_dynamic_thresholding():
    sde = ei.DiscreteVP.linear()
    x = torch.randn(4, 1, 8, 8) * 3

    def wild(x, t):  # predicts x0 far outside [-1, 1]
        return torch.full_like(x, 5.0)

    clipped = ei.sample(wild, x, sde, prediction="x0", clip_x0=1.0, nfe=5, t_end=-1.0)
    assert clipped.abs().max() <= 1.0 + 1e-5
    dyn = ei.sample(wild, x, sde, prediction="x0", dynamic_threshold=0.995, nfe=5, t_end=-1.0)
    assert dyn.abs().max() <= 1.0 + 1e-5
    with pytest.raises(ValueError, match=r"dynamic_threshold must be a percentile in \(0, 1\)"):
        ei.sample(wild, x, sde, dynamic_threshold=99.5)


def test_from_diffusers_with_a_zero_snr_config_samples_from_infinite_noise():
    config = diffusers.DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction").config
    dm = from_diffusers(small_unet(), config)
    assert dm.prediction == "v" and dm.sde.t_terminal == 999 and float(dm.sde.alphas_cumprod[-1]) == 0
    with torch.no_grad():
        sol = ei.solve(dm.model, torch.randn(2, 1, 8, 8), dm.sde, prediction=dm.prediction, nfe=4, t_end=-1.0)
    assert float(sol.eval_times[0]) == 999 and sol.nfe == 4 and torch.isfinite(sol.x).all()
