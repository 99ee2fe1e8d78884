"""Pruning primitives on weight matrices: weight masking (:mod:`~sparseprune.pruning.masking`:
threshold, magnitude per tensor/row/global, N:M) and neuron elimination
(:mod:`~sparseprune.pruning.neurons`: scores and removal with folding into the next layer).
They take dense arrays and return ``scipy.sparse.csr_array`` or smaller dense arrays."""
from sparseprune.pruning.masking import (
    SparsityInfo,
    global_magnitude_prune,
    magnitude_prune,
    nm_prune,
    sparsity_info,
    threshold_mask,
)
from sparseprune.pruning.neurons import (
    activation_scores,
    remove_neurons,
    weight_norm_scores,
)

__all__ = ["SparsityInfo", "activation_scores", "global_magnitude_prune", "magnitude_prune", "nm_prune",
           "remove_neurons", "sparsity_info", "threshold_mask", "weight_norm_scores"]
