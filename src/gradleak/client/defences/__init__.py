"""Client-side defences: DP-SGD through Opacus, Gaussian noise, pruning, quantisation, secure
aggregation."""

from gradleak.client.defences.base import Defence, TrainingDefence, UpdateDefence, record_defence
from gradleak.client.defences.dp_sgd import DPSGD, dp_epsilon, noise_std_mean_gradient
from gradleak.client.defences.noise import GaussianNoise, add_gaussian_noise
from gradleak.client.defences.pruning import TopKPruning, kept_count, prune_tensors, top_k_mask
from gradleak.client.defences.quantization import Quantization, int8_symmetric, quantize_tensors
from gradleak.client.defences.registry import defence_class, defence_names, register_defence
from gradleak.client.defences.secure_aggregation import secure_aggregate, sum_tensors

__all__ = [
    "DPSGD",
    "Defence",
    "GaussianNoise",
    "Quantization",
    "TopKPruning",
    "TrainingDefence",
    "UpdateDefence",
    "add_gaussian_noise",
    "defence_class",
    "defence_names",
    "dp_epsilon",
    "int8_symmetric",
    "kept_count",
    "noise_std_mean_gradient",
    "prune_tensors",
    "quantize_tensors",
    "record_defence",
    "register_defence",
    "secure_aggregate",
    "sum_tensors",
    "top_k_mask",
]
