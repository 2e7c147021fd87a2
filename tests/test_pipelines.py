"""EIScheduler inside real diffusers pipelines built offline from tiny random components: DDPMPipeline and a tiny
Stable Diffusion (UNet2DConditionModel, AutoencoderKL, a CLIPTextModel from a small config and a CLIPTokenizer from a
vocabulary written here). Correctness is checked against an exact model: the UNet's forward is replaced by the eps
that a known data point x0 implies, eps = (x - alpha(t) x0) / sigma(t), so every exact sampler must return that x0
(in latent space for Stable Diffusion), however it starts (text-to-image, img2img at any strength, inpainting)."""

import json
import string
import tempfile

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers.models.unets.unet_2d import UNet2DOutput  # noqa: E402
from PIL import Image  # noqa: E402

from ei_toolkit.diffusion import EIScheduler  # noqa: E402

SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A CLIP BPE tokenizer over lower-case letters and two merged words, from files written here."""
    d = tmp_path_factory.mktemp("tokenizer")
    letters = list(string.ascii_lowercase)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*letters, *(c + "</w>" for c in letters), "ca", "cat</w>", "do", "dog</w>"]:
        vocab.setdefault(token, len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    tok = transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=12)
    assert tok("a cat").input_ids == [0, vocab["a</w>"], vocab["cat</w>"], 1]
    return tok


def sd_components(tokenizer, scheduler):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16).eval()
    config = transformers.CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                         intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                         vocab_size=len(tokenizer), max_position_embeddings=12, projection_dim=16)
    text_encoder = transformers.CLIPTextModel(config).eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def make(cls, tokenizer, scheduler):
    pipe = cls(**sd_components(tokenizer, scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_unet(unet, alphas_cumprod, x0):
    """Make ``unet`` return the eps implied by the data point ``x0`` (log alpha interpolated between the integer
    timesteps, as DiscreteVP does, so fractional timesteps are exact too)."""
    log_alpha = 0.5 * torch.log(torch.as_tensor(alphas_cumprod, dtype=torch.float64))

    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        t = float(torch.as_tensor(timestep, dtype=torch.float64).flatten()[0])
        lo = min(int(np.floor(t)), len(log_alpha) - 2)
        la = float(log_alpha[lo] + (t - lo) * (log_alpha[lo + 1] - log_alpha[lo]))
        a, s = np.exp(la), np.sqrt(-np.expm1(2 * la))
        eps = (sample - a * x0.to(sample)) / s
        return UNet2DOutput(sample=eps) if return_dict else (eps,)

    unet.forward = forward  # the module keeps its config, dtype and device; only its output is replaced
    return unet


def table(scheduler):
    """The alphas_cumprod a scheduler computes with: EIScheduler's float64 schedule, diffusers' float32 one."""
    return scheduler.sde.alphas_cumprod if isinstance(scheduler, EIScheduler) else scheduler.alphas_cumprod.double()


def target_latents(seed=1):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def init_image():
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    return Image.fromarray(rgb)


def dpm():
    return diffusers.DPMSolverMultistepScheduler(**SD_SCHEDULE)


def ei(**kw):
    return EIScheduler(**SD_SCHEDULE, **kw)


# -- DDPMPipeline --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["logrhoab2", "tab3", "sddim", "x0-logrhoab2-pc"])
def test_ddpm_pipeline_returns_the_exact_models_data(method):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8  # inside [-1, 1]
    sched = EIScheduler(method=method)
    exact_unet(unet, table(sched), x0)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=8, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    expected = (x0 / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), rtol=0, atol=2e-6)


def test_stochastic_method_takes_the_pipelines_generator():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=EIScheduler(method="sddim"))
    pipe.set_progress_bar_config(disable=True)

    def draw(seed):
        return pipe(batch_size=1, num_inference_steps=6, generator=torch.Generator().manual_seed(seed),
                    output_type="np").images

    np.testing.assert_array_equal(draw(5), draw(5))
    assert np.abs(draw(5) - draw(6)).max() > 1e-3


# -- Stable Diffusion ----------------------------------------------------------------------------------------------


def test_text_to_image_with_guidance_is_exact_like_dpm_solver(tokenizer):
    x0 = target_latents()
    errors = {}
    for name, scheduler in (("dpm", dpm()), ("ei", ei()), ("ei-tab3", ei(method="tab3")),
                            ("ei-karras", ei(use_karras_sigmas=True))):
        pipe = make(diffusers.StableDiffusionPipeline, tokenizer, scheduler)
        exact_unet(pipe.unet, table(scheduler), x0)
        latents = pipe("a cat", num_inference_steps=10, guidance_scale=5.0, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
        errors[name] = float((latents - x0).abs().max())
    assert all(e < 2e-6 for e in errors.values()), errors  # float32 round-off


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img_starts_mid_schedule_and_is_exact(tokenizer, strength):
    x0 = target_latents()
    for scheduler in (dpm(), ei(), ei(method="x0-logrhoab2-pc"), ei(method="rhork-midpoint")):
        pipe = make(diffusers.StableDiffusionImg2ImgPipeline, tokenizer, scheduler)
        exact_unet(pipe.unet, table(scheduler), x0)
        latents = pipe("a dog", image=init_image(), strength=strength, num_inference_steps=10, guidance_scale=3.0,
                       output_type="latent", generator=torch.Generator().manual_seed(0)).images
        err = float((latents - x0).abs().max())
        assert err < 2e-6, (type(scheduler).__name__, getattr(scheduler.config, "method", None), strength, err)
        if isinstance(scheduler, EIScheduler):  # the run began where the pipeline asked
            steps = min(int(10 * strength), 10)
            assert scheduler.begin_index == (10 - steps) * scheduler.order
            assert scheduler.step_index == len(scheduler.timesteps)


def test_inpainting_keeps_the_image_outside_the_mask_and_is_exact_inside(tokenizer):
    x0 = target_latents()
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :8] = 255  # repaint the left half; in latent space (8 x 8) the left 4 columns
    results = []
    for scheduler in (dpm(), ei(), ei(method="tab3")):
        pipe = make(diffusers.StableDiffusionInpaintPipeline, tokenizer, scheduler)
        exact_unet(pipe.unet, table(scheduler), x0)
        latents = pipe("a cat", image=init_image(), mask_image=Image.fromarray(mask), num_inference_steps=8,
                       guidance_scale=2.0, strength=0.8, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
        results.append(latents)
        assert float((latents[..., :4] - x0[..., :4]).abs().max()) < 2e-6
    # outside the mask: the encoded image, the same whatever the scheduler
    for latents in results[1:]:
        torch.testing.assert_close(latents[..., 4:], results[0][..., 4:], rtol=0, atol=1e-5)
    assert float((results[0][..., 4:] - x0[..., 4:]).abs().max()) > 0.1


def test_scheduler_swap_and_back_and_pipeline_save_load(tokenizer):
    pipe = make(diffusers.StableDiffusionPipeline, tokenizer, dpm())
    kw = {"num_inference_steps": 6, "guidance_scale": 4.0, "output_type": "latent"}
    before = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    dpm_config = dict(pipe.scheduler.config)
    pipe.scheduler = EIScheduler.from_config(pipe.scheduler.config, method="tab3")
    assert isinstance(pipe.scheduler, EIScheduler) and pipe.scheduler.config.method == "tab3"
    ours = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.isfinite(ours).all() and float((ours - before).abs().max()) > 0
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    back = {k: v for k, v in pipe.scheduler.config.items() if k in dpm_config and k != "_use_default_values"}
    assert back == {k: v for k, v in dpm_config.items() if k != "_use_default_values"}
    torch.testing.assert_close(pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images, before,
                               rtol=0, atol=0)
    # the whole pipeline, EIScheduler included, through save_pretrained and DiffusionPipeline.from_pretrained
    pipe.scheduler = EIScheduler.from_config(pipe.scheduler.config, method="tab3")
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        index = json.loads((__import__("pathlib").Path(tmp) / "model_index.json").read_text())
        assert index["scheduler"] == ["ei_toolkit.diffusion.scheduler", "EIScheduler"]
        loaded = diffusers.DiffusionPipeline.from_pretrained(tmp)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, EIScheduler) and loaded.scheduler.config.method == "tab3"
    assert dict(loaded.scheduler.config) == {k: v for k, v in pipe.scheduler.config.items()
                                             if k != "_use_default_values"} | {
        k: v for k, v in loaded.scheduler.config.items() if k == "_use_default_values"}
    torch.testing.assert_close(loaded("a cat", generator=torch.Generator().manual_seed(0), **kw).images, ours,
                               rtol=0, atol=1e-6)


def test_the_tutorial_runs_as_written():
    """Every python block of docs/diffusers_tutorial.md, in order, in one namespace (the project's own docs)."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "diffusers_tutorial.md"
    ns: dict = {}
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(code, str(page), "exec"), ns)
    assert ns["images"].shape == (4, 16, 16, 3)
    assert ns["ems_images"].shape == (2, 16, 16, 3) and np.isfinite(ns["ems_images"]).all()
    assert ns["loaded"].scheduler.config.method == "ems-logrhoab1-pc"
    assert isinstance(ns["loaded"].scheduler, EIScheduler) and ns["sched"].step_index == 10
    assert ns["sched"].begin_index == ns["k"] == 4 and torch.isfinite(ns["latents"]).all()
