"""The built-in ``demo`` set: 40 short fictional private messages written for gradleak.

The messages (notes, e-mails and chat lines) are invented: every name, phone number, address and
account number in them is made up, and the phone numbers use the fictional 555-01xx range. They are
plain ASCII, 6 to 25 words each, and live in ``demo_messages.jsonl`` beside this module.

Label: ``1`` when the message contains a number written with digits (a phone, account, card, policy
or ID number, a street address, a code, a date or an amount), else ``0``; 20 messages of each.
The label is a stand-in for "contains a personal identifier" that anyone can check.
"""

from __future__ import annotations

from importlib import resources

from gradleak.data import _files
from gradleak.data.sources import TextSource
from gradleak.errors import UnknownSpecError

__all__ = ["DEMO_NAME", "load_demo"]

DEMO_NAME = "demo"
_DATA_FILE = "demo_messages.jsonl"


def load_demo(*, split: str = "train") -> TextSource:
    """Returns the built-in demo messages with their labels (one split, ``train``).

    Raises:
        UnknownSpecError: ``split`` is not ``train``.
    """
    if split != "train":
        raise UnknownSpecError(f"The demo set has only the split 'train', not {split!r}.")
    with resources.as_file(resources.files("gradleak.data") / _DATA_FILE) as path:
        rows = _files.read_rows(path)
    texts = _files.texts_from_rows(rows, "text", what="The demo set")
    labels = _files.labels_from_rows(rows, "label", what="The demo set")
    return TextSource(texts=texts, labels=labels, name=DEMO_NAME, split=split, origin="builtin")
