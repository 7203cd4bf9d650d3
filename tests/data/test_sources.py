"""Loading texts: local files, field guessing, the demo set, shared datasets, Hub fallback."""

from __future__ import annotations

import json
import sys
import types

import pytest

from gradleak.data import KNOWN_DATASETS, TextSource, load_demo, load_texts
from gradleak.data.sources import known_name
from gradleak.errors import GradleakError, MissingDependencyError, UnknownSpecError


def write_jsonl(path, rows):
    """Writes rows as JSONL with "\\n" line ends and returns the path as a string."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_jsonl_guesses_named_text_field_and_reads_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "a1", "sentence": "first one", "label": 1},
            {"id": "a2", "sentence": "two", "label": 0},
        ],
    )
    source = load_texts(path)
    assert source.texts == ("first one", "two")
    assert source.labels == (1, 0)
    assert source.name == path and source.split == "" and len(source) == 2


def test_jsonl_keeps_u0085_inside_a_line_and_trailing_spaces(tmp_path):
    # ensure_ascii=False writes a raw U+0085, which str.splitlines() would treat as a line break.
    rows = [{"text": "a\x85b c"}, {"text": "ends with space "}]
    path = tmp_path / "rt.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert "\x85" in path.read_text("utf-8")
    assert load_texts(str(path)).texts == ("a\x85b c", "ends with space ")


def test_csv_guesses_the_only_non_numeric_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('idx,review,label\n0,"good, really",1\n1,bad\x85film,0\n', encoding="utf-8")
    source = load_texts(str(path))
    assert source.texts == ("good, really", "bad\x85film")
    assert source.labels == (1, 0)


def test_txt_one_text_per_line_blank_lines_dropped(tmp_path):
    path = tmp_path / "d.txt"
    path.write_bytes("first line \r\n\n  \nsecond\x85same line\n".encode())
    source = load_texts(str(path))
    assert source.texts == ("first line ", "second\x85same line")
    assert source.labels is None


def test_ambiguous_text_field_lists_columns_and_names_the_option(tmp_path):
    rows = [{"premise": "a b", "hypothesis": "c d", "label": 0}]
    path = write_jsonl(tmp_path / "rte.jsonl", rows)
    with pytest.raises(GradleakError) as info:
        load_texts(path)
    message = str(info.value)
    assert "premise" in message and "hypothesis" in message and "--text-field" in message
    assert load_texts(path, text_field="hypothesis").texts == ("c d",)


def test_explicit_fields_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "y": "not a number"}])
    with pytest.raises(GradleakError, match="no integer label"):
        load_texts(path, label_field="y")
    with pytest.raises(GradleakError, match="'body'"):
        load_texts(path, text_field="body")


def test_missing_or_unsupported_files_raise_clearly(tmp_path):
    with pytest.raises(GradleakError, match="does not exist"):
        load_texts(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.parquet").write_bytes(b"")
    with pytest.raises(GradleakError, match="supported file types"):
        load_texts(str(tmp_path / "d.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(GradleakError, match="line 2"):
        load_texts(str(tmp_path / "bad.jsonl"))


def test_demo_set_has_40_short_ascii_messages_labelled_by_digits():
    source = load_texts("demo")
    assert source == load_demo()
    assert len(source) == 40 and len(set(source.texts)) == 40
    assert sum(source.labels) == 20
    for text, label in zip(source.texts, source.labels, strict=True):
        assert text.isascii() and 6 <= len(text.split()) <= 25
        assert label == int(any(c.isdigit() for c in text))
    with pytest.raises(UnknownSpecError, match="train"):
        load_texts("demo", split="test")


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("cola", "cola"),
        ("glue/cola", "cola"),
        ("SST-2", "sst2"),
        ("glue/sst2", "sst2"),
        ("rotten-tomatoes", "rotten_tomatoes"),
        ("cornell-movie-review-data/rotten_tomatoes", "rotten_tomatoes"),
        ("imdb", None),
        ("my.jsonl", None),
    ],
)
def test_aliases(alias, name):
    assert known_name(alias) == name
    assert name is None or name in KNOWN_DATASETS


@pytest.fixture
def no_shared(monkeypatch, tmp_path):
    """Runs from a folder with no shared data anywhere above it (and no env override)."""
    monkeypatch.delenv("GRADLEAK_SHARED_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("gradleak.data._hub.find_shared_dir", lambda: None)


def test_offline_hub_name_is_one_sentence_naming_the_local_file_option(no_shared, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("someone/private-chats", "cola"):
        with pytest.raises(UnknownSpecError) as info:
            load_texts(name)
        message = str(info.value)
        assert "--dataset path/to/file.jsonl --text-field text" in message
        assert message.count(". ") == 0 and message.endswith(".")


def test_missing_datasets_package_names_extra_and_local_option(no_shared, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingDependencyError) as info:
        load_texts("someone/private-chats")
    assert "gradleak[datasets]" in str(info.value) and "--text-field" in str(info.value)


class FakeTable:
    """The two members of a datasets.Dataset that the Hub fallback uses."""

    def __init__(self, rows):
        self.rows = rows

    def to_list(self):
        return self.rows


def test_hub_fallback_with_a_stand_in_datasets_module(no_shared, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        if hub_id == "broken/set":
            raise ConnectionError("no route to host\nmore lines")
        return FakeTable([{"sentence": "hi there", "label": 1, "idx": 0}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cola = load_texts("glue/cola", split="validation")
    assert calls[-1] == ("nyu-mll/glue", "cola", "validation")
    assert cola.texts == ("hi there",) and cola.origin == "hub:nyu-mll/glue"
    assert load_texts("someone/set").labels == (1,)
    with pytest.raises(UnknownSpecError) as info:
        load_texts("broken/set")
    assert "ConnectionError: no route to host)" in str(info.value)
    assert "--text-field" in str(info.value)


def test_bad_shared_env_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADLEAK_SHARED_DIR", str(tmp_path))
    with pytest.raises(GradleakError, match="GRADLEAK_SHARED_DIR"):
        load_texts("cola")


def test_text_source_validates_labels():
    with pytest.raises(GradleakError):
        TextSource(texts=("a", "b"), labels=(1,), name="x")


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "split", "rows"),
    [
        ("cola", "train", 8551),
        ("cola", "validation", 1043),
        ("sst2", "train", 67349),
        ("sst2", "test", 1821),
        ("rotten_tomatoes", "train", 8530),
    ],
)
def test_shared_datasets_load_with_exact_row_counts(shared_dir, monkeypatch, name, split, rows):
    monkeypatch.setenv("GRADLEAK_SHARED_DIR", str(shared_dir))
    source = load_texts(name, split=split)
    assert len(source) == rows and len(source.labels) == rows
    assert source.origin.endswith(f"{split}.jsonl")


@pytest.mark.shared
def test_shared_texts_keep_trailing_space_and_c1_characters(shared_dir, monkeypatch):
    monkeypatch.setenv("GRADLEAK_SHARED_DIR", str(shared_dir))
    sst2 = load_texts("sst-2")
    assert sst2.texts[0] == "hide new secretions from the parental units "
    rt = load_texts("rotten-tomatoes")
    assert sum("\x85" in t for t in rt.texts) > 0
    with pytest.raises(UnknownSpecError, match="validation"):
        load_texts("cola", split="test")
