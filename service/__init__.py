"""lossd: PyTorch loss functions as a REST service."""

__version__ = "0.1.0"
