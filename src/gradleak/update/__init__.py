"""ClientUpdate, the unit that crosses the trust boundary, and its safetensors file format."""

from gradleak.update.client_update import KINDS, ClientUpdate, UpdateMetadata
from gradleak.update.io import check_finite, check_fits, load_update, save_update

__all__ = [
    "KINDS",
    "ClientUpdate",
    "UpdateMetadata",
    "check_finite",
    "check_fits",
    "load_update",
    "save_update",
]
