"""The versions and hardware a run used, stamped into every summary."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment", "git_revision"]

_PACKAGES = (
    "gradleak",
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "scipy",
    "rouge-score",
    "safetensors",
)


def environment(device: str = "cpu") -> dict[str, Any]:
    """Returns the software versions and the hardware of this process, as plain JSON values.

    Args:
        device: The torch device the run uses; its name is recorded for CUDA devices.
    """
    import torch

    versions = {name: _version(name) for name in _PACKAGES}
    versions["python"] = platform.python_version()
    revision = git_revision()
    if revision:
        versions["gradleak_git"] = revision
    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        hardware["gpu"] = props.name
        hardware["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        hardware["cuda"] = torch.version.cuda
    return {"versions": versions, "hardware": hardware}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """Returns the git commit of a development checkout of gradleak (``+dirty`` if modified), or
    None."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        sha = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()
