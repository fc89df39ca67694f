"""The krew plugin manifest (plugins/cellguard.yaml) against krew's own rules, and the
archive it names: rebuilt here from the tree, its sha256 must be the manifest's.

The rules are those of krew's validator (sigs.k8s.io/krew internal/index/validation,
`validate-krew-manifest`) plus the krew index's review guidelines (a short description of
at most about 50 characters, no two platforms for the same os/arch).
"""

from __future__ import annotations

import copy
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellguard import __version__

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "plugins" / "cellguard.yaml"
BUILD = ROOT / "scripts" / "krew_archive.py"

API_VERSION = "krew.googlecontainertools.github.com/v1alpha2"
SAFE_NAME = re.compile(r"^[\w-]+$")
WINDOWS_FORBIDDEN = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10))}
WINDOWS_FORBIDDEN |= {f"LPT{i}" for i in range(1, 10)}
SHA256 = re.compile(r"^[a-f0-9]{64}$")
# krew parses versions with k8s.io/apimachinery's ParseSemantic after a required "v".
SEMVER = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
SPEC_KEYS = {"version", "shortDescription", "description", "caveats", "homepage", "platforms"}
PLATFORM_KEYS = {"selector", "uri", "sha256", "bin", "files"}
WANTED_PLATFORMS = {(os_, arch) for os_ in ("linux", "darwin") for arch in ("amd64", "arm64")}


def problems(manifest: Any, file_name: str) -> list[str]:
    """What krew (or the krew index's review) would reject in the manifest; [] if none."""
    if not isinstance(manifest, dict):
        return ["not a mapping"]
    found: list[str] = []
    if manifest.get("apiVersion") != API_VERSION:
        found.append(f"apiVersion {manifest.get('apiVersion')!r} is not {API_VERSION}")
    if manifest.get("kind") != "Plugin":
        found.append(f"kind {manifest.get('kind')!r} is not Plugin")
    name = str((manifest.get("metadata") or {}).get("name", ""))
    if not SAFE_NAME.match(name) or name.upper() in WINDOWS_FORBIDDEN:
        found.append(f"plugin name {name!r} is not allowed")
    if name != Path(file_name).stem:
        found.append(f"plugin named {name!r} in {file_name}: the file must be {name}.yaml")
    spec = manifest.get("spec") or {}
    found += [f"unknown spec field {key!r}" for key in sorted(set(spec) - SPEC_KEYS)]
    short = spec.get("shortDescription")
    if not isinstance(short, str) or not short.strip():
        found.append("no shortDescription")
    elif "\n" in short or "\r" in short:
        found.append("shortDescription has a line break")
    elif len(short) > 50:
        found.append(f"shortDescription is {len(short)} characters (at most 50)")
    if not str(spec.get("description") or "").strip():
        found.append("no description")
    if not str(spec.get("homepage") or "").startswith("https://"):
        found.append("homepage is not an https:// URL")
    if not SEMVER.match(str(spec.get("version") or "")):
        found.append(f"version {spec.get('version')!r} is not semver with a leading v")
    platforms = spec.get("platforms") or []
    if not platforms:
        found.append("no platforms")
    seen: set[tuple[str, str]] = set()
    for index, platform in enumerate(platforms):
        found += [f"platforms[{index}]: {p}" for p in _platform_problems(platform, seen)]
    return found


def _platform_problems(platform: dict[str, Any], seen: set[tuple[str, str]]) -> list[str]:
    found = [f"unknown field {key!r}" for key in sorted(set(platform) - PLATFORM_KEYS)]
    if not str(platform.get("uri") or "").startswith("https://"):
        found.append("uri is not an https:// URL")
    if not SHA256.match(str(platform.get("sha256") or "")):
        found.append(f"sha256 {platform.get('sha256')!r} is not 64 lowercase hex digits")
    if not platform.get("bin"):
        found.append("no bin")
    files = platform.get("files")
    if files is not None:
        if not files:
            found.append("files is empty (leave it out instead)")
        elif any(not f.get("from") or not f.get("to") for f in files):
            found.append("a file without from or to")
        elif platform.get("bin") not in {f["from"] for f in files}:
            found.append(f"bin {platform.get('bin')!r} is not among the files")
    selector = platform.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        return [*found, "no selector (or an empty one)"]
    labels = selector.get("matchLabels") or {}
    keys = set(labels) | {e.get("key") for e in selector.get("matchExpressions") or []}
    found += [f"selector key {key!r} (only os and arch)" for key in sorted(keys - {"os", "arch"})]
    pair = (str(labels.get("os")), str(labels.get("arch")))
    if pair in seen:
        found.append(f"a second platform for {pair[0]}/{pair[1]}")
    seen.add(pair)
    return found


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return document


def test_the_manifest_passes_krews_rules(manifest: dict[str, Any]) -> None:
    assert problems(manifest, MANIFEST.name) == []


def test_the_manifest_is_this_version_on_every_wanted_platform(manifest: dict[str, Any]) -> None:
    spec = manifest["spec"]
    assert spec["version"] == f"v{__version__}"
    platforms = spec["platforms"]
    labels = {
        (p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"])
        for p in platforms
    }
    assert labels == WANTED_PLATFORMS and len(platforms) == len(WANTED_PLATFORMS)
    for platform in platforms:
        # The release asset of this version, the one archive every platform shares.
        assert platform["uri"] == (
            "https://github.com/cellguard/cellguard/releases/download/"
            f"v{__version__}/kubectl-cellguard-v{__version__}.zip"
        )
        assert platform["bin"] == "kubectl-cellguard"


def _broken(manifest: dict[str, Any], change: str) -> dict[str, Any]:
    bad = copy.deepcopy(manifest)
    spec, first = bad["spec"], bad["spec"]["platforms"][0]
    if change == "placeholder sha256":
        first["sha256"] = "<sha256>"
    elif change == "version without v":
        spec["version"] = __version__
    elif change == "long shortDescription":
        spec["shortDescription"] = "x" * 51
    elif change == "duplicate platform":
        spec["platforms"].append(copy.deepcopy(first))
    elif change == "selector key":
        first["selector"]["matchLabels"]["distro"] = "debian"
    elif change == "no bin":
        del first["bin"]
    elif change == "name":
        bad["metadata"]["name"] = "cell guard"
    return bad


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("placeholder sha256", "is not 64 lowercase hex digits"),
        ("version without v", "is not semver with a leading v"),
        ("long shortDescription", "at most 50"),
        ("duplicate platform", "a second platform for linux/amd64"),
        ("selector key", "selector key 'distro'"),
        ("no bin", "no bin"),
        ("name", "is not allowed"),
    ],
)
def test_the_validator_rejects(manifest: dict[str, Any], change: str, said: str) -> None:
    assert any(said in p for p in problems(_broken(manifest, change), MANIFEST.name))


def _build(out: Path) -> tuple[Path, str]:
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    sha256, path = done.stdout.split()
    return Path(path), sha256


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _build(tmp_path_factory.mktemp("krew"))


def test_the_manifest_sha256_is_the_built_archives(
    manifest: dict[str, Any], archive: tuple[Path, str], tmp_path: Path
) -> None:
    path, sha256 = archive
    assert path.name == f"kubectl-cellguard-v{__version__}.zip"
    hint = "run: python3 scripts/krew_archive.py --update-manifest"
    assert {p["sha256"] for p in manifest["spec"]["platforms"]} == {sha256}, hint
    # The same bytes on a second build: nothing of the time or the machine goes in.
    assert _build(tmp_path)[1] == sha256


def test_the_archive_holds_the_files_krew_copies(
    manifest: dict[str, Any], archive: tuple[Path, str]
) -> None:
    with zipfile.ZipFile(archive[0]) as opened:
        entries = {info.filename: info for info in opened.infolist()}
        launcher = opened.read("kubectl-cellguard").decode()
    for platform in manifest["spec"]["platforms"]:
        assert {f["from"] for f in platform["files"]} == set(entries)
    mode = entries["kubectl-cellguard"].external_attr >> 16
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o755
    assert launcher.startswith("#!/bin/sh\n")
    assert f"\nversion={__version__}\n" in launcher


# Stands in for python3: the version check, `-m venv --clear DIR`, and - as DIR/bin/python -
# `-m pip install ... SPEC`, which "installs" a kubectl-cellguard that echoes its arguments.
FAKE_PYTHON = """#!/bin/sh
case "$1 $2" in
  "-c "*) exit "${FAKE_PYTHON_VERSION_CHECK:-0}" ;;
  "-m venv") mkdir -p "$4/bin"; touch "$4/pyvenv.cfg"; cp "$0" "$4/bin/python"; exit 0 ;;
  "-m pip")
    eval spec=\\${$#}
    bin=$(dirname "$0")/kubectl-cellguard
    printf '#!/bin/sh\\necho "from %s:" "$@"\\n' "$spec" > "$bin"
    chmod +x "$bin" ;;
esac
"""


def _launcher(
    archive: tuple[Path, str], tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    launcher = tmp_path / "kubectl-cellguard"
    if not launcher.exists():
        with zipfile.ZipFile(archive[0]) as opened:
            launcher.write_bytes(opened.read("kubectl-cellguard"))
        launcher.chmod(0o755)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "CELLGUARD_BOOTSTRAP_PYTHON": str(fake),
        **env,
    }
    return subprocess.run(
        [str(launcher), "status", "-A"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_launcher_installs_once_then_runs(archive: tuple[Path, str], tmp_path: Path) -> None:
    first = _launcher(archive, tmp_path)
    wheel = (
        "https://github.com/cellguard/cellguard/releases/download/"
        f"v{__version__}/cellguard-{__version__}-py3-none-any.whl"
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"from {wheel}: status -A\n"
    home = tmp_path / "home" / ".local" / "share" / "cellguard" / f"krew-v{__version__}"
    assert f"installing cellguard {__version__} into {home}" in first.stderr
    again = _launcher(archive, tmp_path)
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, "")
    # Another source (a checkout, a wheel) into another home.
    other = _launcher(
        archive, tmp_path, CELLGUARD_HOME=str(tmp_path / "venv"), CELLGUARD_PIP_SPEC="/src"
    )
    assert other.stdout == "from /src: status -A\n"


def test_the_launcher_refuses_an_old_python_and_a_foreign_directory(
    archive: tuple[Path, str], tmp_path: Path
) -> None:
    old = _launcher(archive, tmp_path, FAKE_PYTHON_VERSION_CHECK="1")
    assert old.returncode == 2
    assert "needs Python 3.11 or newer" in old.stderr
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = _launcher(archive, tmp_path, CELLGUARD_HOME=str(foreign))
    assert refused.returncode == 2
    assert "is not a virtualenv" in refused.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
