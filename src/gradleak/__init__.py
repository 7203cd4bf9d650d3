"""gradleak: how much private text leaks from federated fine-tuning updates of language models."""

from gradleak.errors import GradleakError

__version__ = "0.1.0"

__all__ = ["GradleakError", "__version__"]
