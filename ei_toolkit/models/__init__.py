"""Small trained models shipped with the package."""

from .digits import DigitsEps, load_digits_model
from .digits_cond import NULL_LABEL, DigitsCondEps, digits_cond_model, guided_digits_model

__all__ = ["NULL_LABEL", "DigitsCondEps", "DigitsEps", "digits_cond_model", "guided_digits_model",
           "load_digits_model"]
