"""Packaging: one version source, the licence in PEP 639 form, py.typed, and an sdist manifest
that carries every repository path README.md names."""

import re
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest

import beyondsgd

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_single_source():
    version = _pyproject()["project"]["version"]
    assert beyondsgd.__version__ == version
    assert f'"{version}"' not in (ROOT / "src/beyondsgd/__init__.py").read_text()  # no 2nd copy


def test_version_fallback_reads_pyproject(monkeypatch):
    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(beyondsgd, "_dist_version", missing)
    assert beyondsgd._version() == _pyproject()["project"]["version"]


def test_license_pep639_and_file():
    proj = _pyproject()
    assert proj["project"]["license"] == "MIT"
    assert proj["project"]["license-files"] == ["LICENSE"]
    req = proj["build-system"]["requires"]
    m = re.fullmatch(r"setuptools>=(\d+)", req[0])
    assert m and int(m.group(1)) >= 77, req  # first setuptools with PEP 639 license fields
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the beyondsgd authors" in text


def test_py_typed_is_package_data():
    assert (ROOT / "src/beyondsgd/py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["beyondsgd"]


def _manifest_covers(rel: str, rules: list[tuple[str, str]]) -> bool:
    covered = rel.startswith("src/beyondsgd/") and rel.endswith(".py")  # package modules
    for kind, arg in rules:
        if kind == "graft" and (rel == arg or rel.startswith(arg.rstrip("/") + "/")):
            covered = True
        elif kind == "prune" and (rel == arg or rel.startswith(arg.rstrip("/") + "/")):
            covered = False
        elif kind == "include" and rel in arg.split():
            covered = True
    return covered


def test_sdist_manifest_covers_readme_links():
    rules = [tuple(line.split(None, 1)) for line in (ROOT / "MANIFEST.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"`((?:docs|benchmarks|tests|src)/[\w./-]+)`", readme))
    paths |= {"LICENSE", "README.md", "src/beyondsgd/py.typed"}
    assert len(paths) >= 8
    for rel in sorted(paths):
        assert (ROOT / rel).exists(), f"README names {rel}, which does not exist"
        assert _manifest_covers(rel, rules), f"{rel} is not in the sdist (MANIFEST.in)"
    assert not _manifest_covers("tests/.cache/x", rules)
