"""The refusal direction as a value: difference-of-means candidates, their separation and cosine."""

from refusal_probe.direction.estimators import (
    Candidates,
    Direction,
    difference_of_means,
    pca_of_differences,
)
from refusal_probe.direction.separation import (
    LayerSeparation,
    cosine_per_layer,
    separation_curve,
)

__all__ = [
    "Candidates",
    "Direction",
    "LayerSeparation",
    "cosine_per_layer",
    "difference_of_means",
    "pca_of_differences",
    "separation_curve",
]
