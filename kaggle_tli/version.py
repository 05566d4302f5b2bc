"""The version of kaggle-tli: one place, read by the package face and by the wheel a bundle carries."""

__version__ = "0.1.0"
