"""GGUF checkpoints: dequantised by transformers once, then cached as safetensors.

Dequantising SmolLM2's 272 GGUF tensors takes 12-14 s; the cached float32 copy reloads in well
under a second. ``save_pretrained`` refuses a GGUF-loaded model, so the weights are moved into a
plain model built from the same config (without its quantisation entry) before saving.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from gradleak.errors import MissingDependencyError

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Returns the folder that holds converted models (``GRADLEAK_CACHE`` or the user cache dir)."""
    env = os.environ.get("GRADLEAK_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gradleak"))


def cached_gguf_dir(gguf_file: Path) -> Path:
    """Returns a local model directory converted from ``gguf_file``, converting it on first use."""
    gguf_file = gguf_file.resolve()
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf_file.stem}-{key}"
    if (target / "config.json").exists():
        return target
    _convert(gguf_file, target)
    return target


def _convert(gguf_file: Path, target: Path) -> None:
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        try:
            __import__(module)
        except ImportError:
            raise MissingDependencyError(
                f"loading a GGUF file needs {package}: run `pip install 'gradleak[gguf]'`."
            ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s once; later loads use the cache in %s", gguf_file.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never leaves a half cache.
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
