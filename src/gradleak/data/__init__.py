"""The victim side's data: text sources, the demo set, samplers and the Batch they produce."""

from gradleak.data.batch import Batch
from gradleak.data.demo import DEMO_NAME, load_demo
from gradleak.data.samplers import (
    SAMPLERS,
    dager_sampler,
    lamp_sampler,
    make_batches,
    random_sampler,
    sample_batches,
)
from gradleak.data.sources import KNOWN_DATASETS, TextSource, load_file, load_texts

__all__ = [
    "DEMO_NAME",
    "KNOWN_DATASETS",
    "SAMPLERS",
    "Batch",
    "TextSource",
    "dager_sampler",
    "lamp_sampler",
    "load_demo",
    "load_file",
    "load_texts",
    "make_batches",
    "random_sampler",
    "sample_batches",
]
