"""Sample a diffusers model with DEIS in 10 steps: offline, on a small randomly initialised UNet2DModel
(with real weights, load them with UNet2DModel.from_pretrained instead; nothing else changes).

Run: python examples/diffusers_deis_10_steps.py
"""

import torch
from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

import ei_toolkit as ei
from ei_toolkit.diffusion import EIScheduler, from_diffusers

torch.manual_seed(0)
unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                   norm_num_groups=8).eval()
scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

# 1. One call: the SDE, the model callable and its prediction type, from the UNet and the scheduler config.
dm = from_diffusers(unet, scheduler)
x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    # random weights predict nonsense; clip the data prediction to the pixel range, as for any pixel model
    images = ei.sample(dm.model, x, dm.sde, prediction=dm.prediction, method="tab3", nfe=10, t_end=dm.sde.t0,
                       clip_x0=1.0)
print("ei.sample, tAB3-DEIS, 10 steps:", tuple(images.shape), f"range [{images.min():.2f}, {images.max():.2f}]")

# 2. Or as a drop-in scheduler inside an existing pipeline (here replacing DPM-Solver's config).
pipe = DDPMPipeline(unet=unet, scheduler=DPMSolverMultistepScheduler.from_config(scheduler.config))
pipe.scheduler = EIScheduler.from_config(pipe.scheduler.config, method="tab3")
pipe.set_progress_bar_config(disable=True)
out = pipe(batch_size=4, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="np")
print("DDPMPipeline with EIScheduler, 10 steps:", out.images.shape)

# 3. The pipeline, EIScheduler included, saves and loads like any diffusers pipeline.
import tempfile  # noqa: E402

from diffusers import DiffusionPipeline  # noqa: E402

with tempfile.TemporaryDirectory() as folder:
    pipe.save_pretrained(folder)
    loaded = DiffusionPipeline.from_pretrained(folder)
print("reloaded:", type(loaded.scheduler).__name__, loaded.scheduler.config.method)
