#!/usr/bin/env python3
"""Build the archive the krew manifest (plugins/cellguard.yaml) installs, byte for byte.

    python3 scripts/krew_archive.py                    # dist/kubectl-cellguard-vX.Y.Z.zip
    python3 scripts/krew_archive.py --update-manifest  # and write its sha256 and version in

The archive holds `kubectl-cellguard`, a POSIX sh launcher, and the LICENSE. cellguard is a
Python package with compiled dependencies (pydantic-core, cryptography), so no single file
runs it everywhere; the launcher installs cellguard of exactly this version, with its
dependencies, into a virtualenv of its own on first use, and runs it from there. One
archive serves every platform the manifest lists.

It is a zip without compression, with fixed timestamps and modes: the same bytes, so the
same sha256, on any machine and with any zlib (tests/unit/test_krew_manifest.py rebuilds it
and compares). It changes only with the launcher, the LICENSE or the version.

A release (tag vX.Y.Z) publishes, as GitHub release assets, this archive and the wheel
`cellguard-X.Y.Z-py3-none-any.whl` the launcher installs (`pip wheel --no-deps .`).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "plugins" / "cellguard.yaml"
HOME = "https://github.com/cellguard/cellguard"
# 1980-01-01, the earliest time a zip can hold: no build time leaks into the bytes.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)

LAUNCHER = """\
#!/bin/sh
# kubectl-cellguard {version}, as krew installs it: a launcher for the cellguard Python
# package. On first use it installs cellguard {version} and its dependencies into a
# virtualenv of its own, then runs `kubectl-cellguard` from there:
#   CELLGUARD_HOME             the virtualenv (default: $XDG_DATA_HOME or ~/.local/share,
#                              then cellguard/krew-v{version})
#   CELLGUARD_BOOTSTRAP_PYTHON the Python that creates it (default: python3; 3.11 or newer)
#   CELLGUARD_PIP_SPEC         what pip installs (default: the release's wheel; a checkout
#                              directory or another wheel works too)
# The first run needs network access (pip, and PyPI for the dependencies).
set -eu
version={version}
home=${{CELLGUARD_HOME:-${{XDG_DATA_HOME:-$HOME/.local/share}}/cellguard/krew-v$version}}
if [ ! -f "$home/.cellguard-installed" ]; then
    python=${{CELLGUARD_BOOTSTRAP_PYTHON:-python3}}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "kubectl-cellguard: needs Python 3.11 or newer as '$python'" \\
            "(install it, or set CELLGUARD_BOOTSTRAP_PYTHON)" >&2
        exit 2
    fi
    # A half-made virtualenv of ours is redone; anything else there is left alone.
    if [ -e "$home" ] && [ ! -f "$home/pyvenv.cfg" ]; then
        echo "kubectl-cellguard: $home exists and is not a virtualenv; set CELLGUARD_HOME" >&2
        exit 2
    fi
    spec=${{CELLGUARD_PIP_SPEC:-{home}/releases/download/v$version/cellguard-$version-py3-none-any.whl}}
    echo "kubectl-cellguard: installing cellguard $version into $home (first use only)" >&2
    "$python" -m venv --clear "$home"
    "$home/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
    touch "$home/.cellguard-installed"
fi
exec "$home/bin/kubectl-cellguard" "$@"
"""


def version() -> str:
    text = (ROOT / "operator" / "cellguard" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise SystemExit("no __version__ in operator/cellguard/__init__.py")
    return found.group(1)


def archive_name(ver: str) -> str:
    return f"kubectl-cellguard-v{ver}.zip"


def archive_uri(ver: str) -> str:
    return f"{HOME}/releases/download/v{ver}/{archive_name(ver)}"


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.create_system = 3  # Unix: the mode below is read by krew (Go's archive/zip)
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


def build(out_dir: Path) -> tuple[Path, str]:
    """Write the archive into out_dir; its path and sha256."""
    ver = version()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / archive_name(ver)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        launcher = LAUNCHER.format(version=ver, home=HOME)
        archive.writestr(_entry("kubectl-cellguard", 0o755), launcher)
        archive.writestr(_entry("LICENSE", 0o644), (ROOT / "LICENSE").read_bytes())
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def update_manifest(ver: str, sha256: str) -> None:
    """Write the version, the archive's URI and its sha256 into every platform of the manifest."""
    text = MANIFEST.read_text()
    text = re.sub(r"(?m)^(  version: )v\S+$", rf"\g<1>v{ver}", text)
    text = re.sub(r"(?m)^(\s+uri: )\S+$", rf"\g<1>{archive_uri(ver)}", text)
    text = re.sub(r"(?m)^(\s+sha256: )\S+$", rf"\g<1>{sha256}", text)
    MANIFEST.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="directory (dist/)")
    parser.add_argument(
        "--update-manifest", action="store_true", help=f"write into {MANIFEST.relative_to(ROOT)}"
    )
    args = parser.parse_args()
    path, sha256 = build(args.out)
    if args.update_manifest:
        update_manifest(version(), sha256)
    print(f"{sha256}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
