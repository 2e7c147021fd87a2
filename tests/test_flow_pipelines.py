"""EIScheduler as a drop-in for flow-matching pipelines (issue 21): the scheduler contract of diffusers'
FlowMatchEulerDiscreteScheduler in our own words, and a tiny StableDiffusion3Pipeline (random SD3Transformer2DModel,
AutoencoderKL, two CLIP text encoders from small configs, no T5; tokenizers from vocabularies written here) with its
transformer replaced by the exact velocity of a known latent x0, v = (x - x0) / sigma, so every exact sampler must
return x0 to round-off, from pure noise (text-to-image) or from a noised image (img2img at any strength)."""

import json
import string

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

import ei_toolkit as ei  # noqa: E402
from ei_toolkit.diffusion import EIScheduler  # noqa: E402
from ei_toolkit.diffusion.scheduler import FLOW_METHOD  # noqa: E402
from ei_toolkit.testing.problems import get_problem  # noqa: E402

F32 = torch.finfo(torch.float32).eps


def flow_match(**kw):
    return diffusers.FlowMatchEulerDiscreteScheduler(**kw)


def from_flow(method=None, **kw):
    extra = {} if method is None else {"method": method}
    return EIScheduler.from_config(flow_match(**kw).config, **extra)


# -- the scheduler contract ------------------------------------------------------------------------------------------


def test_a_flow_match_config_makes_a_flow_scheduler_with_the_fields_pipelines_read():
    sched = from_flow(shift=3.0)
    assert sched.config.prediction_type == "flow_prediction" and sched.prediction == "flow"
    assert isinstance(sched.sde, ei.RectifiedFlow) and sched.method.name == FLOW_METHOD and sched.order == 1
    for key, value in (("shift", 3.0), ("use_dynamic_shifting", False), ("base_shift", 0.5), ("max_shift", 1.15),
                       ("base_image_seq_len", 256), ("max_image_seq_len", 4096), ("num_train_timesteps", 1000)):
        assert sched.config[key] == value, key
    assert sched.init_noise_sigma == 1.0 and sched.betas is None
    # an explicit method and a VP config still work as before
    assert from_flow("ddim").method.name == "ddim"
    assert EIScheduler.from_config(diffusers.DDIMScheduler().config).prediction == "eps"
    with pytest.raises(ValueError, match="invert_sigmas"):
        EIScheduler(prediction_type="flow_prediction", invert_sigmas=True)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        EIScheduler(prediction_type="flow_prediction", stochastic_sampling=True)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 5, 28])
def test_timesteps_and_sigmas_are_flow_match_eulers(shift, steps):
    """timesteps = 1000 sigma in model units, sigmas end with 0, both float32 as diffusers' (agreeing to 2 ulp of
    1000: its timesteps are float32 products; ours are rounded once from float64)."""
    theirs, ours = flow_match(shift=shift), from_flow(shift=shift)
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert ours.timesteps.dtype == torch.float32 and len(ours.timesteps) == steps == ours.num_inference_steps
    assert float(ours.timesteps[0]) == 1000.0 and float(ours.sigmas[0]) == 1.0 and float(ours.sigmas[-1]) == 0.0
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=2 * 1000 * F32)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=4 * F32)
    torch.testing.assert_close(ours.timesteps, ours.sigmas[:-1] * 1000, rtol=F32, atol=0)


def test_dynamic_shifting_takes_mu_and_the_pipelines_sigmas():
    kw = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
    for kind in ("exponential", "linear"):
        theirs, ours = flow_match(time_shift_type=kind, **kw), from_flow(time_shift_type=kind, **kw)
        sigmas = np.linspace(1.0, 1 / 12, 12)  # what FluxPipeline passes
        theirs.set_timesteps(sigmas=sigmas, mu=0.9)
        ours.set_timesteps(sigmas=sigmas, mu=0.9)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=4 * F32)
        with pytest.raises(ValueError, match="pass mu"):
            ours.set_timesteps(8)
    term = from_flow(shift=3.0, shift_terminal=0.05)
    term.set_timesteps(6)
    assert abs(float(term.sigmas[-2]) - 0.05) < 1e-6
    # timesteps= are used as given (model units), and reproduce a run's schedule
    again = from_flow(shift=3.0)
    again.set_timesteps(timesteps=term.timesteps)
    assert again.timesteps.tolist() == term.timesteps.tolist()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ddim_is_flow_match_euler_step_for_step(shift):
    """The one-point method from sigma = 1 is FlowMatchEuler's Euler step (float32 states: a few ulp per step)."""
    v = get_problem("gmm2d").flow_model(ei.RectifiedFlow())
    theirs, ours = flow_match(shift=shift), from_flow("ddim", shift=shift)
    theirs.set_timesteps(12)
    ours.set_timesteps(12)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    a, b = x.clone(), x.clone()
    for t1, t2 in zip(theirs.timesteps, ours.timesteps, strict=True):
        a = theirs.step(v(a, (t1 / 1000).expand(16)), t1, a).prev_sample
        b = ours.step(v(b, (t2 / 1000).expand(16)), t2, b).prev_sample
        torch.testing.assert_close(b, a, rtol=0, atol=16 * F32 * 4)


@pytest.mark.parametrize("method", [FLOW_METHOD, "x0-logrhoab2-unipc", "x0-logrhoab1-mid-pc"])
def test_a_flow_run_equals_ei_sample_on_its_grid_and_restarts_mid_schedule(method):
    """The scheduler's loop is ei.sample on its grid, from sigma = 1 (a data-prediction plan keeps the evaluation at
    infinite noise as its first node, zero_snr.py) and from mid-schedule (img2img: the plan on the rest)."""
    v = get_problem("gmm16").flow_model(ei.RectifiedFlow())
    flow = ei.RectifiedFlow()
    sched = from_flow(shift=3.0, method=method)
    sched.set_timesteps(10)
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run(x, start=0):
        sched.set_timesteps(10)
        sched.set_begin_index(start)
        y = x
        for t in sched.timesteps[start:]:
            y = sched.step(v(y, (t.double() / 1000).expand(8)), t, y).prev_sample
        return y

    grid = sched.sigmas.double()
    torch.testing.assert_close(run(x), ei.sample(v, x, flow, method=method, grid=torch.as_tensor(
        sched._grid), prediction="flow"), rtol=0, atol=1e-12)
    # img2img: noised by scale_noise at timesteps[4], then the plan on the rest of the grid (lower order first)
    x0 = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sched.set_timesteps(10)
    sched.set_begin_index(4)
    noised = sched.scale_noise(x0, sched.timesteps[4:5], x)
    sigma = float(grid[4])
    torch.testing.assert_close(noised, sigma * x + (1 - sigma) * x0, rtol=0, atol=1e-6)
    ref = flow_match(shift=3.0)
    ref.set_timesteps(10)
    ref.set_begin_index(4)
    torch.testing.assert_close(noised.float(), ref.scale_noise(x0.float(), ref.timesteps[4:5], x.float()),
                               rtol=0, atol=1e-6)
    tail = torch.as_tensor(sched._grid)[4:]
    torch.testing.assert_close(run(noised, 4), ei.sample(v, noised, flow, method=method, grid=tail,
                                                         prediction="flow"), rtol=0, atol=1e-12)


def test_flow_scheduler_save_and_load(tmp_path):
    sched = from_flow(shift=3.0, use_dynamic_shifting=False, shift_terminal=0.02)
    sched.save_pretrained(tmp_path / "s")
    back = EIScheduler.from_pretrained(tmp_path / "s")
    assert back.prediction == "flow" and back.method.name == FLOW_METHOD and back.config.shift == 3.0
    assert back.config.shift_terminal == 0.02
    sched.set_timesteps(7)
    back.set_timesteps(7)
    assert back.timesteps.tolist() == sched.timesteps.tolist()
    # swap and back: a FlowMatchEuler scheduler from the EIScheduler's config keeps the schedule
    fm = diffusers.FlowMatchEulerDiscreteScheduler.from_config(back.config)
    assert fm.config.shift == 3.0 and fm.config.shift_terminal == 0.02


def test_step_errors_are_clear():
    sched = from_flow()
    sched.set_timesteps(3)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="is not one of the scheduler's timesteps"):
        sched.step(x, 123.0, x)
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(RuntimeError, match="past the last"):
        sched.step(x, sched.timesteps[-1], x)


# -- a tiny Stable Diffusion 3 ----------------------------------------------------------------------------------------


def clip_tokenizer(d):
    letters = list(string.ascii_lowercase)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*letters, *(c + "</w>" for c in letters), "ca", "cat</w>"]:
        vocab.setdefault(token, len(vocab))
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=12)


def sd3(tmp_path, scheduler, pipeline=None):
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=16).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16,
                                  shift_factor=0.0609, scaling_factor=1.5305).eval()  # SD3's latent normalisation
    encoders, tokenizers = [], []
    for i in range(2):
        tok = clip_tokenizer(tmp_path / f"tok{i}")
        config = transformers.CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                             intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                             vocab_size=len(tok), max_position_embeddings=12, projection_dim=16)
        encoders.append(transformers.CLIPTextModelWithProjection(config).eval())
        tokenizers.append(tok)
    cls = pipeline or diffusers.StableDiffusion3Pipeline
    pipe = cls(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=encoders[0],
               tokenizer=tokenizers[0], text_encoder_2=encoders[1], tokenizer_2=tokenizers[1], text_encoder_3=None,
               tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_velocity(transformer, x0):
    """The transformer returns the velocity of the point mass at latent x0: v = (x - x0) / sigma, sigma = t / 1000."""

    def forward(hidden_states, timestep=None, *args, return_dict=True, **kwargs):
        sigma = torch.as_tensor(timestep, dtype=torch.float64).flatten()[0] / 1000
        v = ((hidden_states.double() - x0.double()) / sigma).to(hidden_states.dtype)
        return (v,) if not return_dict else diffusers.models.modeling_outputs.Transformer2DModelOutput(sample=v)

    transformer.forward = forward
    return transformer


@pytest.mark.parametrize("method", [None, "ddim", "x0-logrhoab1-mid-pc", "logrhoab2"])
def test_sd3_text_to_image_returns_the_exact_models_latents(tmp_path, method):
    """From pure noise the exact velocity's ODE ends at x0; every exact sampler gets there to float32 round-off. The
    bound: each step rounds the state (|x| <= 4), the velocity (|z - x0| <= 8) and eps = x + alpha v (<= 12) in
    float32, <= 24 eps32 per step, and eps-form plans near sigma = 1 combine terms up to rho = sigma / (1 - sigma) times
    larger (x0 = (x - sigma eps) / alpha): n * 24 eps32 * rho_1, rho_1 at the first grid point after pure noise."""
    sched = from_flow(method, shift=3.0)
    pipe = sd3(tmp_path, sched)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    exact_velocity(pipe.transformer, x0)
    out = pipe("a cat", height=16, width=16, num_inference_steps=8, guidance_scale=3.0, output_type="latent",
               generator=torch.Generator().manual_seed(0)).images
    sigma1 = float(sched.sigmas[1])
    torch.testing.assert_close(out, x0, rtol=0, atol=8 * 24 * F32 * max(1.0, sigma1 / (1 - sigma1)))
    # the decoded image path runs too
    img = pipe("a cat", height=16, width=16, num_inference_steps=3, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_sd3_img2img_returns_the_exact_models_latents_at_any_strength(tmp_path, strength):
    sched = from_flow(shift=3.0)
    pipe = sd3(tmp_path, sched, diffusers.StableDiffusion3Img2ImgPipeline)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    exact_velocity(pipe.transformer, x0)
    image = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    out = pipe("a cat", image=image, strength=strength, num_inference_steps=10, guidance_scale=2.0,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images
    sigma1 = float(sched.sigmas[sched.begin_index + (1 if sched.begin_index == 0 else 0)])
    torch.testing.assert_close(out, x0, rtol=0, atol=10 * 24 * F32 * max(1.0, sigma1 / (1 - sigma1)))  # as above
    assert sched.begin_index == 10 - int(10 * strength)


def test_sd3_pipeline_save_load_and_swap(tmp_path):
    pipe = sd3(tmp_path, flow_match(shift=3.0))
    pipe.scheduler = EIScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.prediction == "flow"
    pipe.save_pretrained(tmp_path / "pipe")
    absent = {"text_encoder_3": None, "tokenizer_3": None, "image_encoder": None, "feature_extractor": None}
    loaded = diffusers.StableDiffusion3Pipeline.from_pretrained(tmp_path / "pipe", **absent)
    assert isinstance(loaded.scheduler, EIScheduler) and loaded.scheduler.method.name == FLOW_METHOD
    loaded.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(loaded.scheduler.config)
    assert loaded.scheduler.config.shift == 3.0


def test_ems_and_stochastic_methods_in_a_flow_scheduler(tmp_path):
    """EMS with statistics of a velocity model (saved next to the config and read back), and sddim with the
    generator a pipeline passes (lam = 1: the first step from pure noise draws fresh noise)."""
    flow = ei.RectifiedFlow()
    mix = get_problem("gmm2d")
    v = mix.flow_model(flow)
    stats = ei.model_statistics(v, torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)),
                                flow, prediction="flow", nodes=40)
    stats.save(tmp_path / "stats.pt")
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = mix.flow_reference(z, 1.0, 0.0)

    def run(sched, **kw):
        sched.set_timesteps(10)
        y = z.clone()
        for t in sched.timesteps:
            y = sched.step(v(y, (t.double() / 1000).expand(64)), t, y, **kw).prev_sample
        return y

    ems = EIScheduler.from_config(flow_match().config, method="ems-logrhoab1-pc", statistics=str(tmp_path / "stats.pt"))
    err = float((run(ems) - ref).norm() / ref.norm())
    assert err < 0.15, err  # measured 0.08 (FLOW_METHOD: 0.086 on this schedule)
    ems.save_pretrained(tmp_path / "ems")
    back = EIScheduler.from_pretrained(tmp_path / "ems")
    torch.testing.assert_close(run(back), run(ems), rtol=0, atol=0)
    sddim = {"method": "sddim", "lam": 1.0}
    a = run(EIScheduler.from_config(flow_match().config, **sddim), generator=torch.Generator().manual_seed(0))
    b = run(EIScheduler.from_config(flow_match().config, **sddim), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(a).all() and torch.equal(a, b)


# -- a tiny Flux ------------------------------------------------------------------------------------------------------


def flux(tmp_path, pipeline=None):
    """FluxPipeline (or its img2img variant) from tiny random components: a CLIP text encoder, a one-layer T5 encoder
    with a word-level T5 tokenizer built here, FluxTransformer2DModel, AutoencoderKL; Flux's config: dynamic
    shifting from the image sequence length."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = clip_tokenizer(tmp_path / "clip")
    words = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "cat": 4}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    t5_tok = transformers.T5TokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>",
                                          unk_token="<unk>", extra_ids=0)
    torch.manual_seed(0)
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, vocab_size=len(tok), max_position_embeddings=12, projection_dim=16)).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=8, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                           num_heads=2, pad_token_id=0, eos_token_id=1)).eval()
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16,
                                  shift_factor=0.1159, scaling_factor=0.3611).eval()
    config = flow_match(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                        max_image_seq_len=4096, shift=3.0).config
    cls = pipeline or diffusers.FluxPipeline
    pipe = cls(scheduler=EIScheduler.from_config(config), vae=vae, text_encoder=clip, tokenizer=tok,
               text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_flux_velocity(transformer, x0):
    """Flux passes sigma itself as the timestep, and packed latents (batch, tokens, 16)."""

    def forward(hidden_states, timestep=None, *args, return_dict=True, **kwargs):
        sigma = torch.as_tensor(timestep, dtype=torch.float64).flatten()[0]
        v = ((hidden_states.double() - x0.double()) / sigma).to(hidden_states.dtype)
        return (v,) if not return_dict else diffusers.models.modeling_outputs.Transformer2DModelOutput(sample=v)

    transformer.forward = forward


@pytest.mark.parametrize("strength", [None, 0.6])
def test_flux_text_to_image_and_img2img_return_the_exact_models_latents(tmp_path, strength):
    """Dynamic shifting (mu from the pipeline) and the pipeline's sigmas=; bound as for SD3 above."""
    cls = diffusers.FluxPipeline if strength is None else diffusers.FluxImg2ImgPipeline
    pipe = flux(tmp_path, cls)
    x0 = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))  # packed 8 x 8 x 4 latents
    exact_flux_velocity(pipe.transformer, x0)
    kw = {} if strength is None else {
        "image": Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)),
        "strength": strength}
    out = pipe("a cat", height=16, width=16, num_inference_steps=8, guidance_scale=3.5, output_type="latent",
               max_sequence_length=8, generator=torch.Generator().manual_seed(0), **kw).images
    sched = pipe.scheduler
    assert sched.config.use_dynamic_shifting and sched.prediction == "flow"
    k = sched.begin_index or 0
    sigma1 = float(sched.sigmas[k + 1 if k == 0 else k])
    torch.testing.assert_close(out, x0, rtol=0, atol=8 * 24 * F32 * max(1.0, sigma1 / (1 - sigma1)))
