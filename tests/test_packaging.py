"""Packaging facts that need no build, each checked against the files' own declarations:
the licence files match the licence that pyproject.toml and Cargo.toml declare, there is one
version number (Cargo.toml's, also CHANGELOG.md's latest release and the installed
package's), the classifiers agree with requires-python, and the release workflow runs only
Makefile targets."""

import re
from pathlib import Path

import fastctc
import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CARGO = tomllib.loads((ROOT / "Cargo.toml").read_text(encoding="utf-8"))

# The opening words of each licence's standard text, by SPDX identifier.
LICENCE_TEXTS = {
    "MIT": ["MIT License", "Permission is hereby granted, free of charge"],
    "Apache-2.0": ["Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS"],
}


def spdx_ids(expression: str) -> set[str]:
    return set(re.split(r"\s+(?:OR|AND)\s+", expression.strip("() ")))


def test_one_licence_declared():
    assert PYPROJECT["project"]["license"] == CARGO["package"]["license"]


def test_licence_files_match_the_declared_licence():
    declared = spdx_ids(PYPROJECT["project"]["license"])
    files = PYPROJECT["project"]["license-files"]
    assert len(files) == len(declared)
    by_id = {}
    for name in files:
        text = (ROOT / name).read_text(encoding="utf-8")
        matches = [i for i, words in LICENCE_TEXTS.items() if all(w in text for w in words)]
        assert len(matches) == 1, f"{name} is not one of the known licence texts"
        by_id[matches[0]] = name
    assert set(by_id) == declared
    assert "the fastctc developers" in (ROOT / by_id["MIT"]).read_text(encoding="utf-8")


def test_one_version():
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    version = CARGO["package"]["version"]
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text("utf-8"), re.M)
    assert headings[0] == "Unreleased"
    releases = [h for h in headings if h != "Unreleased"]
    assert releases[0] == version, "CHANGELOG.md's latest release is not Cargo.toml's version"
    assert fastctc.__version__ == version


def test_python_versions_agree():
    floor = re.fullmatch(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    classifiers = PYPROJECT["project"]["classifiers"]
    minors = sorted(
        int(m.group(1))
        for c in classifiers
        if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c))
    )
    assert minors[0] == int(floor)
    assert minors == list(range(minors[0], minors[-1] + 1))
    # The abi3 floor of the wheel is the same version.
    pyo3 = CARGO["dependencies"]["pyo3"]["features"]
    assert f"abi3-py3{floor}" in pyo3


def test_release_workflow_runs_makefile_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    used = re.findall(r"\bmake (?:-s )?([a-z][a-z-]*)", workflow)
    assert {"wheel", "install-wheel", "test-python"} <= set(used)
    assert set(used) <= targets, set(used) - targets
