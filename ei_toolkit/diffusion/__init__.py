"""Diffusion models as a client: guidance, x0 thresholding, diffusers integration (``EIScheduler`` and
``from_diffusers`` load lazily, so that diffusers stays an optional extra)."""

from typing import Any

from ..model import threshold_x0
from .guidance import classifier_free_guidance

__all__ = ["EIInverseScheduler", "EIScheduler", "EISchedulerOutput", "classifier_free_guidance", "from_diffusers",
           "sde_from_scheduler_config", "threshold_x0"]


def __getattr__(name: str) -> Any:
    if name in ("EIScheduler", "EISchedulerOutput"):
        from . import scheduler

        return getattr(scheduler, name)
    if name in ("EIInverseScheduler", "EIInverseSchedulerOutput"):
        from . import inverse_scheduler

        return getattr(inverse_scheduler, name)
    if name in ("from_diffusers", "sde_from_scheduler_config"):
        from . import diffusers_integration

        return getattr(diffusers_integration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
