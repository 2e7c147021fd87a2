"""Small trained models shipped with the package (``registry.shipped_model(name)`` lists them by name)."""

from .digits import DigitsEps, load_digits_model
from .digits_cond import NULL_LABEL, DigitsCondEps, digits_cond_model, guided_digits_model
from .digits_flow import DigitsFlow, load_digits_flow_model
from .patches import PatchUNet, load_patches_flow_model, load_patches_model

__all__ = ["NULL_LABEL", "DigitsCondEps", "DigitsEps", "DigitsFlow", "PatchUNet", "digits_cond_model",
           "guided_digits_model", "load_digits_flow_model", "load_digits_model", "load_patches_flow_model",
           "load_patches_model"]
