"""The version is written once, as `cellguard.__version__`; the copies that cannot read it
(Helm's Chart.yaml, the Dockerfile's default build argument) must equal it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import cellguard
from cellguard import __version__

REPO = Path(__file__).resolve().parents[2]
CHART_YAML = REPO / "helm" / "cellguard" / "Chart.yaml"
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"

# SemVer 2 (https://semver.org), which Helm requires of a chart's version.
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)


def test_the_version_is_semver() -> None:
    assert SEMVER.fullmatch(__version__), __version__


def test_pyproject_reads_the_version_from_the_package() -> None:
    pyproject = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    source = REPO / pyproject["tool"]["hatch"]["version"]["path"]
    assert source.resolve() == Path(cellguard.__file__).resolve()


def test_the_chart_version_and_app_version_are_the_package_version() -> None:
    chart = yaml.safe_load(CHART_YAML.read_text())
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__), (
        f"helm/cellguard/Chart.yaml: set version and appVersion to {__version__}"
    )


def test_the_dockerfile_default_version_is_the_package_version() -> None:
    defaults = re.findall(r"^ARG VERSION=(\S+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert defaults == [__version__], f"Dockerfile: set ARG VERSION={__version__}"
