"""Small trained models shipped with the package."""

from .digits import DigitsEps, load_digits_model

__all__ = ["DigitsEps", "load_digits_model"]
