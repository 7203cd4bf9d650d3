"""Text sources: the built-in demo set, the papers' datasets, local files and Hugging Face Hub ids.

:func:`load_texts` resolves a name in this order:

1. ``demo``: the built-in set of fictional private messages (:mod:`gradleak.data.demo`);
2. ``cola``, ``sst2``, ``rotten_tomatoes`` (aliases such as ``sst-2``, ``glue/cola``,
   ``rotten-tomatoes``, ``rt``): the JSONL copies in ``<shared>/data/<name>/<split>.jsonl``, found
   through ``$GRADLEAK_SHARED_DIR`` or a ``shared/`` folder beside the repository; failing that, the
   Hugging Face Hub through the optional ``datasets`` package;
3. a local ``.jsonl``/``.ndjson``/``.json``/``.csv``/``.tsv``/``.txt`` file;
4. anything else: a Hugging Face Hub dataset id (optional ``datasets`` package, network needed).

Texts are never stripped or re-encoded: SST-2 keeps its trailing spaces and Rotten Tomatoes its
C1 control characters (U+0085, U+0096), exactly as on the Hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gradleak.data import _files, _hub
from gradleak.errors import GradleakError, UnknownSpecError

__all__ = ["KNOWN_DATASETS", "TextSource", "load_file", "load_texts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSource:
    """A list of texts (one split of one dataset) to draw client batches from.

    Attributes:
        texts: The texts in their stored order.
        labels: One integer label per text, or None when the source has none.
        name: The dataset name (canonical for the built-ins) or the file path.
        split: The split, e.g. ``"train"``; empty for a local file.
        origin: Where the rows were read: a file path, ``"builtin"`` or ``"hub:<id>"``.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    name: str
    split: str = ""
    origin: str = ""

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise GradleakError(
                f"TextSource {self.name!r} has {len(self.labels)} labels "
                f"for {len(self.texts)} texts."
            )

    def __len__(self) -> int:
        return len(self.texts)


class KnownDataset(NamedTuple):
    """Where one of the papers' datasets lives, locally and on the Hub."""

    folder: str
    hub_id: str
    hub_config: str | None
    text_field: str
    label_field: str = "label"


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "cola": KnownDataset("cola", "nyu-mll/glue", "cola", "sentence"),
    "sst2": KnownDataset("sst2", "nyu-mll/glue", "sst2", "sentence"),
    "rotten_tomatoes": KnownDataset(
        "rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes", None, "text"
    ),
}
_ALIASES = {
    "cola": "cola",
    "sst2": "sst2",
    "rottentomatoes": "rotten_tomatoes",
    "rt": "rotten_tomatoes",
}
_PREFIXES = ("nyu-mll/glue/", "nyu-mll/glue:", "glue/", "glue:", "cornell-movie-review-data/")


def known_name(name: str) -> str | None:
    """Returns the canonical name of one of the papers' datasets, or None if ``name`` is not one."""
    key = name.strip().lower()
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return _ALIASES.get(key.replace("-", "").replace("_", ""))


def load_texts(
    name_or_path: str,
    *,
    split: str = "train",
    text_field: str | None = None,
    label_field: str | None = None,
) -> TextSource:
    """Returns the texts (and labels, when there are any) of a dataset split or a local file.

    Args:
        name_or_path: ``demo``, a known dataset name, a local file path, or a Hub dataset id.
        split: The split for named datasets; ignored for local files.
        text_field: The column holding the texts; guessed when there is one obvious column.
        label_field: The column holding integer labels; ``label`` is used when present.

    Raises:
        UnknownSpecError: The name cannot be resolved offline, or the split does not exist.
        MissingDependencyError: A Hub dataset is needed and ``datasets`` is not installed.
        GradleakError: A local file is missing, malformed, or its text column is ambiguous.
    """
    from gradleak.data.demo import DEMO_NAME, load_demo  # noqa: PLC0415 - demo imports this module

    if name_or_path.strip().lower() == DEMO_NAME:
        return load_demo(split=split)
    known = known_name(name_or_path)
    if known is not None:
        return _load_known(known, split=split, text_field=text_field, label_field=label_field)
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in _files.SUFFIXES or path.exists():
        return load_file(path, text_field=text_field, label_field=label_field)
    what = f"Dataset {name_or_path!r}"
    rows = _hub.load_hub_split(name_or_path, config=None, split=split, what=what)
    return _source(rows, name_or_path, split, f"hub:{name_or_path}", text_field, label_field)


def load_file(
    path: str | Path, *, text_field: str | None = None, label_field: str | None = None
) -> TextSource:
    """Returns the texts of one local file (see :func:`load_texts` for the arguments).

    Raises:
        GradleakError: The file is missing, malformed, empty or its text column is ambiguous.
    """
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"Dataset file {str(path)!r} does not exist or is not a file.")
    rows = _files.read_rows(path)
    if not rows:
        raise GradleakError(f"Dataset file {str(path)!r} holds no texts.")
    logger.info("Read %d rows from %s", len(rows), path)
    return _source(rows, str(path), "", str(path), text_field, label_field)


def _load_known(
    name: str, *, split: str, text_field: str | None, label_field: str | None
) -> TextSource:
    """Returns a split of one of the papers' datasets, from the shared folder or else the Hub."""
    spec = KNOWN_DATASETS[name]
    text_field = text_field or spec.text_field
    label_field = label_field or spec.label_field
    shared = _hub.find_shared_dir()
    folder = shared / "data" / spec.folder if shared is not None else None
    if folder is not None and folder.is_dir():
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            splits = sorted(p.stem for p in folder.glob("*.jsonl"))
            raise UnknownSpecError(
                f"Dataset {name!r} has no split {split!r} in {str(folder)!r}; "
                f"choose one of {splits}."
            )
        rows = _files.read_rows(path)
        logger.info("Read %d rows of %s/%s from %s", len(rows), name, split, path)
        return _source(rows, name, split, str(path), text_field, label_field)
    what = f"Dataset {name!r} (no shared data folder found; set ${_hub.SHARED_ENV})"
    rows = _hub.load_hub_split(spec.hub_id, config=spec.hub_config, split=split, what=what)
    return _source(rows, name, split, f"hub:{spec.hub_id}", text_field, label_field)


def _source(
    rows: list, name: str, split: str, origin: str, text_field: str | None, label_field: str | None
) -> TextSource:
    """Returns a TextSource built from row dicts, choosing the text column when not given."""
    what = f"Dataset {name!r}"
    if not rows:
        raise GradleakError(f"{what} holds no texts.")
    field = text_field or _files.guess_text_field(rows, what=what)
    texts = _files.texts_from_rows(rows, field, what=what)
    labels = _files.labels_from_rows(rows, label_field, what=what)
    return TextSource(texts=texts, labels=labels, name=name, split=split, origin=origin)
