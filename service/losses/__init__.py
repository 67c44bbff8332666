"""Pure loss computation: the registry and the loss families declared into it. No HTTP here."""

from service.losses import classification, embedding, focal, probabilistic, regression, sequence
from service.losses.registry import REGISTRY, LossParams, LossSpec, Registry, TensorArg, TensorKind

__all__ = [
    "REGISTRY",
    "LossParams",
    "LossSpec",
    "Registry",
    "TensorArg",
    "TensorKind",
    "classification",
    "embedding",
    "focal",
    "probabilistic",
    "regression",
    "sequence",
]
