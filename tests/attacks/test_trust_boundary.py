"""The trust boundary: nothing under ``gradleak.attacks`` imports the victim side or the truth.

An attack sees what the server sees: the public model and the client's update. The victim side
(``gradleak.data``, ``gradleak.client``), the ground truth (``gradleak.scoring``) and everything
that drives them (``gradleak.experiments``, ``gradleak.integrations``) stay out of reach, checked
two ways:

- dynamically: a fresh interpreter imports every ``gradleak.attacks`` submodule and no forbidden
  package may be in ``sys.modules`` afterwards (whatever the import's spelling);
- statically: every file under ``attacks/`` is parsed, so imports inside functions and under
  ``TYPE_CHECKING`` are caught too, in every form: absolute, relative (``from ..client import
  x``, resolved against the file's package), ``from gradleak import data``, and
  ``importlib.import_module`` / ``__import__`` with a literal name.

The second half of this file plants each form in a small fake package tree and checks that the
same checkers flag it, so the boundary test is known to be able to fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import gradleak.attacks

#: The packages under the top-level package that no attack may import.
FORBIDDEN = ("data", "client", "scoring", "experiments", "integrations")


def forbidden_package(module: str, top: str = "gradleak") -> str | None:
    """Returns the forbidden package ``module`` lies in (``gradleak.client``), or None."""
    for name in FORBIDDEN:
        package = f"{top}.{name}"
        if module == package or module.startswith(package + "."):
            return package
    return None


# -- static check ------------------------------------------------------------------------------


def _package_of(path: Path, root: Path, package: str) -> str:
    """Returns the package a file's relative imports resolve against."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts = parts[:-1]  # a module's package is its folder; __init__'s is its folder too
    return ".".join([package, *parts])


def _resolve(level: int, module: str | None, package: str) -> str | None:
    """Returns the absolute name of ``from <level dots><module> import ...`` inside ``package``."""
    base = package.split(".")
    if level - 1 >= len(base):
        return None  # beyond the top-level package: Python refuses it anyway
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dynamic_import_target(call: ast.Call) -> list[str]:
    """Returns the modules an ``importlib.import_module`` / ``__import__`` call names literally."""
    func = call.func
    name = (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else ""
    )
    if name not in ("import_module", "__import__") or not call.args:
        return []
    target = _literal(call.args[0])
    if target is None:
        return []
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    if name == "import_module" and target.startswith("."):
        anchor = _literal(call.args[1] if len(call.args) > 1 else keywords.get("package"))
        level = len(target) - len(target.lstrip("."))
        resolved = _resolve(level, target.lstrip(".") or None, anchor) if anchor else None
        return [resolved] if resolved else []
    names = [target]
    if name == "__import__":  # __import__("gradleak", fromlist=["client"]) imports gradleak.client
        fromlist = call.args[3] if len(call.args) > 3 else keywords.get("fromlist")
        if isinstance(fromlist, (ast.List, ast.Tuple)):
            names += [f"{target}.{n}" for n in map(_literal, fromlist.elts) if n]
    return names


def imported_names(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """Yields (line, absolute module name) for every import in the file, in any form."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.level, node.module, package) if node.level else node.module
            if module is None:
                continue
            yield node.lineno, module
            for alias in node.names:  # `from gradleak import client` imports gradleak.client
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call):
            for module in _dynamic_import_target(node):
                yield node.lineno, module


def static_violations(root: Path, package: str, top: str = "gradleak") -> list[str]:
    """Returns ``file:line imports X`` for every forbidden import under ``root``.

    Args:
        root: the folder of the package checked (``.../gradleak/attacks``).
        package: its dotted name (``gradleak.attacks``).
        top: the top-level package whose FORBIDDEN subpackages are out of reach.
    """
    found: dict[tuple[str, int, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        own = _package_of(path, root, package)
        for line, module in imported_names(path, own):
            bad = forbidden_package(module, top)
            if bad:  # one finding per line and package (`from x import a, b` names it once)
                found.setdefault((str(path.relative_to(root)), line, bad), module)
    return [f"{f}:{line} imports {module} ({bad})" for (f, line, bad), module in found.items()]


# -- dynamic check -----------------------------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    package, top, forbidden, extra_path = json.loads(sys.argv[1])
    sys.path[:0] = extra_path

    def loaded():
        return {
            f"{top}.{name}"
            for name in forbidden
            if f"{top}.{name}" in sys.modules
        }

    report = {"pulled_in": {}, "errors": [], "modules": []}
    seen = set()

    def note(who):
        new = sorted(loaded() - seen)
        if new:
            report["pulled_in"][who] = new
            seen.update(new)

    importlib.import_module(top)
    note(top)
    root = importlib.import_module(package)
    note(package)

    def failed(name):
        report["errors"].append(f"{name}: {sys.exc_info()[1]!r}")

    for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=failed):
        try:
            importlib.import_module(info.name)
        except Exception as err:
            report["errors"].append(f"{info.name}: {err!r}")
            continue
        report["modules"].append(info.name)
        note(info.name)
    print(json.dumps(report))
    """
)


def dynamic_report(
    package: str = "gradleak.attacks", top: str = "gradleak", extra_path: Sequence[str] = ()
) -> dict:
    """Imports every submodule of ``package`` in a fresh interpreter; returns what it pulled in.

    Returns a dict with ``pulled_in`` (the module whose import first loaded each forbidden
    package: ``{module: [package, ...]}``), ``errors`` (modules that failed to import) and
    ``modules`` (every submodule imported).
    """
    args = json.dumps([package, top, list(FORBIDDEN), [str(p) for p in extra_path]])
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the real boundary -------------------------------------------------------------------------

ATTACKS = Path(gradleak.attacks.__file__).parent


def test_attacks_import_no_victim_side_package_in_a_fresh_interpreter():
    report = dynamic_report()
    assert not report["errors"], report["errors"]
    assert len(report["modules"]) > 10  # the walk found the attacks, not an empty package
    assert not report["pulled_in"], (
        f"importing these pulled in forbidden packages (module: packages): {report['pulled_in']}"
    )


def test_no_file_under_attacks_imports_the_victim_side_in_any_form():
    files = list(ATTACKS.rglob("*.py"))
    assert len(files) > 10
    assert static_violations(ATTACKS, "gradleak.attacks") == []


# -- proof that both checks can fail -----------------------------------------------------------

FAKE_TREE = {
    "__init__.py": '"""A fake top-level package laid out like gradleak."""\n',
    "attacks/__init__.py": "from fakeleak.attacks.base import Attack\n",
    "attacks/base.py": (
        "from __future__ import annotations\n\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n\n"
        "from fakeleak.models import load_model  # the public model: allowed\n"
        "from ..update import ClientUpdate  # the update: allowed\n"
        "from . import sub\n\n"
        "#: Mentioning gradleak.client in text is not importing it.\n"
        'NOTE = "fakeleak.client is the victim"\n\n\n'
        "class Attack:\n"
        "    def plugin(self, name):\n"
        "        return importlib.import_module(name)  # not a literal: not flagged\n"
    ),
    "attacks/sub/__init__.py": "",
    "attacks/sub/deep.py": "import fakeleak.clientele  # a different package, same prefix\n",
    "models/__init__.py": "def load_model():\n    return None\n",
    "update/__init__.py": "class ClientUpdate:\n    pass\n",
    "clientele/__init__.py": "",
    **{f"{name}/__init__.py": "" for name in FORBIDDEN},
    "client/settings.py": "class ClientSettings:\n    pass\n",
    "data/sources.py": "def load_texts():\n    return []\n",
    "scoring/metrics.py": "def rouge():\n    return 0.0\n",
    "experiments/runner.py": "def run():\n    return None\n",
}


def make_fake_tree(root: Path, plant: dict[str, str] | None = None) -> Path:
    """Writes the fake package ``fakeleak`` under ``root``, with ``plant`` appended to files."""
    top = root / "fakeleak"
    for rel, text in FAKE_TREE.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(text)
    for rel, text in (plant or {}).items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        previous = path.read_text() if path.exists() else ""
        path.write_text(previous + text)
    return top


#: Each forbidden form, the file it is planted in (under fakeleak/) and the package it reaches.
PLANTS = [
    ("attacks/base.py", "import fakeleak.client\n", "fakeleak.client"),
    ("attacks/base.py", "import fakeleak.data.sources as sources\n", "fakeleak.data"),
    ("attacks/base.py", "from fakeleak.scoring import metrics\n", "fakeleak.scoring"),
    ("attacks/base.py", "from fakeleak.experiments.runner import run\n", "fakeleak.experiments"),
    ("attacks/base.py", "from fakeleak import integrations\n", "fakeleak.integrations"),
    ("attacks/base.py", "from fakeleak import models, data as d\n", "fakeleak.data"),
    ("attacks/base.py", "from ..client import settings\n", "fakeleak.client"),
    ("attacks/base.py", "from ..client.settings import ClientSettings\n", "fakeleak.client"),
    ("attacks/base.py", "from .. import scoring\n", "fakeleak.scoring"),
    ("attacks/sub/deep.py", "from ...data.sources import load_texts\n", "fakeleak.data"),
    ("attacks/sub/__init__.py", "from ...experiments import runner\n", "fakeleak.experiments"),
    ("attacks/sub/new.py", "from ... import client\n", "fakeleak.client"),
    (
        "attacks/base.py",
        "def later():\n    from fakeleak.client.settings import ClientSettings\n",
        "fakeleak.client",
    ),
    (
        "attacks/base.py",
        "if TYPE_CHECKING:\n    from fakeleak.data import sources\n",
        "fakeleak.data",
    ),
    ("attacks/base.py", 'M = importlib.import_module("fakeleak.client")\n', "fakeleak.client"),
    (
        "attacks/base.py",
        'from importlib import import_module\nM = import_module("fakeleak.scoring.metrics")\n',
        "fakeleak.scoring",
    ),
    (
        "attacks/base.py",
        'M = importlib.import_module("..data", package="fakeleak.attacks")\n',
        "fakeleak.data",
    ),
    ("attacks/base.py", 'M = __import__("fakeleak.integrations")\n', "fakeleak.integrations"),
    ("attacks/base.py", 'M = __import__("fakeleak", fromlist=["client"])\n', "fakeleak.client"),
]


def test_the_fake_tree_itself_is_clean(tmp_path):
    top = make_fake_tree(tmp_path)
    assert static_violations(top / "attacks", "fakeleak.attacks", top="fakeleak") == []
    report = dynamic_report("fakeleak.attacks", top="fakeleak", extra_path=[str(tmp_path)])
    assert report["errors"] == [] and report["pulled_in"] == {}
    assert "fakeleak.attacks.sub.deep" in report["modules"]


@pytest.mark.parametrize(("rel", "code", "package"), PLANTS, ids=[p[1].strip() for p in PLANTS])
def test_static_check_flags_each_planted_form(tmp_path, rel, code, package):
    top = make_fake_tree(tmp_path, {rel: code})
    found = static_violations(top / "attacks", "fakeleak.attacks", top="fakeleak")
    assert found, f"{code!r} in {rel} was not flagged"
    assert all(rel.removeprefix("attacks/") in f and f.endswith(f"({package})") for f in found)


def test_static_check_flags_a_relative_import_planted_in_a_copy_of_the_real_attacks(tmp_path):
    import shutil

    copy = tmp_path / "gradleak" / "attacks"
    shutil.copytree(ATTACKS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert static_violations(copy, "gradleak.attacks") == []
    target = copy / "dager" / "attack.py"
    target.write_text(target.read_text() + "\nfrom ...client import ClientSettings\n")
    found = static_violations(copy, "gradleak.attacks")
    assert len(found) == 1 and found[0].startswith("dager/attack.py:")
    assert found[0].endswith("imports gradleak.client (gradleak.client)")


@pytest.mark.parametrize(
    ("rel", "code", "package"),
    [
        ("attacks/base.py", "import fakeleak.client\n", "fakeleak.client"),
        ("attacks/sub/deep.py", "from ...data.sources import load_texts\n", "fakeleak.data"),
        ("attacks/sub/new.py", "from ... import scoring\n", "fakeleak.scoring"),
        (
            "attacks/base.py",
            'M = importlib.import_module("fakeleak.experiments")\n',
            "fakeleak.experiments",
        ),
        (
            "attacks/sub/new.py",
            "import fakeleak.models\nimport fakeleak.integrations\n",
            "fakeleak.integrations",
        ),
    ],
)
def test_dynamic_check_reports_a_planted_module(tmp_path, rel, code, package):
    make_fake_tree(tmp_path, {rel: code})
    report = dynamic_report("fakeleak.attacks", top="fakeleak", extra_path=[str(tmp_path)])
    assert report["errors"] == []
    culprits = [m for m, packages in report["pulled_in"].items() if package in packages]
    assert culprits, f"{code!r} in {rel} was not reported: {report}"
    module = "fakeleak." + rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    # a package's __init__ may import the planted module first; either way it is named
    assert culprits[0] in (module, module.rpartition(".")[0], "fakeleak.attacks")


def test_dynamic_check_reports_a_top_level_package_that_imports_the_victim_side(tmp_path):
    make_fake_tree(tmp_path, {"__init__.py": "from fakeleak import client\n"})
    report = dynamic_report("fakeleak.attacks", top="fakeleak", extra_path=[str(tmp_path)])
    assert report["pulled_in"] == {"fakeleak": ["fakeleak.client"]}
