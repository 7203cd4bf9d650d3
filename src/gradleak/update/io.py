"""Saving and loading ClientUpdates as safetensors with a JSON header. Never pickle.

The tensors are stored in a safetensors file; the metadata is one JSON string under the key
``gradleak`` of the file's header. A user can therefore capture updates from their own
federated system, write them with :func:`save_update` (or any safetensors writer plus that header)
and attack them offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gradleak.errors import InvalidUpdateError
from gradleak.update.client_update import KINDS, ClientUpdate, UpdateMetadata

HEADER_KEY = "gradleak"


def save_update(update: ClientUpdate, path: str | os.PathLike) -> Path:
    """Returns the path the update was written to (``.safetensors`` added if missing)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in update.tensors.items()}
    header = {HEADER_KEY: json.dumps(update.metadata.to_dict(), sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)
    return path


def load_update(path: str | os.PathLike, *, model: torch.nn.Module | None = None) -> ClientUpdate:
    """Returns the update stored at ``path``, checked for damage, non-finite values and fit.

    Args:
        path: a file written by :func:`save_update`.
        model: if given, every tensor must name one of its parameters with the same shape.

    Raises:
        InvalidUpdateError: the file is missing, truncated, not a gradleak update, holds NaN or
            Inf, or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidUpdateError(f"no update file at {path}; check the path.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise InvalidUpdateError(_unreadable(path, err)) from None
    metadata = _parse_header(path, header)
    update = ClientUpdate(tensors=tensors, metadata=metadata)
    check_finite(update)
    if model is not None:
        check_fits(update, model, source=str(path))
    return update


#: How files that are not safetensors begin: pickle protocols 2 to 5, and torch.save's zip.
_PICKLE_STARTS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
_ZIP_START = b"PK\x03\x04"


def _unreadable(path: Path, err: Exception) -> str:
    """Returns what is wrong with a file safetensors cannot read, by how it begins."""
    with path.open("rb") as handle:
        start = handle.read(9)
    if start.startswith(_PICKLE_STARTS) or start.startswith(_ZIP_START):
        kind = "a Python pickle" if start.startswith(_PICKLE_STARTS) else "a zip file (torch.save)"
        return (
            f"{path} is not a safetensors file but {kind}, and gradleak never unpickles files; "
            "save the tensors with safetensors (gradleak.update.save_update) instead."
        )
    if len(start) == 9 and start[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return f"{path} is a damaged safetensors file ({err}); it may be truncated: write it again."
    return (
        f"{path} is not a safetensors file ({err}); give a ClientUpdate written by "
        "gradleak.update.save_update or another safetensors writer."
    )


def check_finite(update: ClientUpdate) -> None:
    """Raises InvalidUpdateError if any tensor holds NaN or Inf."""
    bad = [
        name
        for name, t in update.tensors.items()
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        raise InvalidUpdateError(
            f"the update holds NaN or Inf in {len(bad)} tensor(s), first {bad[0]}; the client's "
            f"training diverged or the file is corrupt: recompute it."
        )


def check_fits(
    update: ClientUpdate,
    model: torch.nn.Module,
    *,
    source: str = "the update",
    loaded: str | None = None,
) -> None:
    """Raises InvalidUpdateError unless every tensor matches a parameter of ``model``.

    Args:
        update: The update to check, by tensor name and shape.
        model: The model the attack would use.
        source: How the message names the update (e.g. its file).
        loaded: The spec ``model`` was loaded from, when not the one the update names.
    """
    params = dict(model.named_parameters())
    problems = list(_mismatches(update.tensors.items(), params))
    if not problems:
        return
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    made_for = update.metadata.model
    if loaded is not None and loaded != made_for:
        raise InvalidUpdateError(
            f"{source} does not fit model {loaded!r}: {problems[0]}{more}; it was made for "
            f"{made_for!r}: load that model (leave out --model)."
        )
    raise InvalidUpdateError(
        f"{source} does not fit model {made_for!r} as loaded: {problems[0]}{more}; "
        "load the model the update was made for."
    )


def _mismatches(items: Iterable[tuple[str, torch.Tensor]], params: Mapping[str, torch.Tensor]):
    for name, tensor in items:
        if name not in params:
            yield f"it has {name}, which the model lacks"
        elif tuple(tensor.shape) != tuple(params[name].shape):
            yield f"{name} has shape {tuple(tensor.shape)}, the model {tuple(params[name].shape)}"


def _parse_header(path: Path, header: dict[str, str]) -> UpdateMetadata:
    if HEADER_KEY not in header:
        raise InvalidUpdateError(
            f"{path} has no gradleak header; add one with gradleak.update.save_update or write the "
            f"metadata JSON under the safetensors header key {HEADER_KEY!r}."
        )
    try:
        metadata = UpdateMetadata.from_dict(json.loads(header[HEADER_KEY]))
    except (json.JSONDecodeError, TypeError) as err:
        raise InvalidUpdateError(f"{path} has an unreadable gradleak header ({err}).") from None
    if metadata.kind not in KINDS:
        raise InvalidUpdateError(
            f"{path} declares kind {metadata.kind!r}; expected one of {', '.join(KINDS)}."
        )
    return metadata
