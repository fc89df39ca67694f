"""Container images without a registry or a daemon: pack files into an OCI image layout.

`pack_image` writes a single-layer image as an OCI image-layout tar archive, which
`ctr images import` reads; `import_image` imports it into a containerd namespace (the
kubelet's is `k8s.io`) so that pods with `imagePullPolicy: Never` find it. Every entry is
owned by root with mtime 0 and gzip carries no timestamp, so the same files always give
the same digests, and importing again is a no-op.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# Directories every image gets, so runtimes can mount /proc, /sys, /dev and write /tmp.
BASE_DIRECTORIES = ("dev", "etc", "proc", "sys", "tmp")
BASE_FILES = {
    "etc/passwd": b"root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n",
    "etc/group": b"root:x:0:\nnobody:x:65534:\n",
}


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageFile:
    """One file of an image: `path` inside it, content from `source` or `data`."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    mode: int = 0o755

    def content(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.source is None:
            raise ImageError(f"{self.path}: neither source nor data given")
        return self.source.read_bytes()


@dataclass(frozen=True)
class PackedImage:
    reference: str
    archive: Path
    manifest_digest: str


def go_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def _layer(files: Sequence[ImageFile], symlinks: dict[str, str]) -> bytes:
    """The uncompressed layer tar: parent directories first, then files and symlinks."""
    paths = [f.path.strip("/") for f in files] + [p.strip("/") for p in symlinks]
    directories = set(BASE_DIRECTORIES)
    for path in paths:
        parts = path.split("/")
        directories.update("/".join(parts[:k]) for k in range(1, len(parts)))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        given = {f.path.strip("/") for f in files}
        for name, data in BASE_FILES.items():
            if name not in given:
                _add(archive, name, data)
        for file in sorted(files, key=lambda f: f.path):
            _add(archive, file.path.strip("/"), file.content(), file.mode)
        for path, target in sorted(symlinks.items()):
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            archive.addfile(info)
    return raw.getvalue()


def pack_image(
    archive_path: Path,
    reference: str,
    files: Sequence[ImageFile],
    entrypoint: Sequence[str],
    *,
    symlinks: dict[str, str] | None = None,
    env: Sequence[str] = ("PATH=/bin:/usr/bin:/",),
) -> PackedImage:
    """Write a one-layer OCI image-layout archive holding `files`, tagged `reference`."""
    if ":" not in reference.rsplit("/", 1)[-1]:
        raise ImageError(f"image reference needs a tag: {reference!r}")
    architecture = go_architecture()
    layer_tar = _layer(files, symlinks or {})
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:
        gz.write(layer_tar)
    layer = compressed.getvalue()
    config = _json(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Entrypoint": list(entrypoint), "Env": list(env), "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
            "history": [{"created_by": "cellguard.devcluster.ociimage"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": architecture, "os": "linux"},
                    # ctr keeps the reference as written only with this annotation.
                    "annotations": {
                        "io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    )
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "w") as archive:
        _add(archive, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        for blob in (layer, config, manifest):
            _add(archive, "blobs/sha256/" + _digest(blob).removeprefix("sha256:"), blob)
        _add(archive, "index.json", index)
    return PackedImage(reference, archive_path, _digest(manifest))


def import_image(
    image: PackedImage, address: Path, namespace: str = "k8s.io", timeout: float = 60.0
) -> None:
    """`ctr images import` the archive into containerd at `address` (its socket)."""
    result = subprocess.run(
        [
            "ctr",
            "--connect-timeout",
            "2s",
            "--address",
            str(address),
            "--namespace",
            namespace,
            "images",
            "import",
            str(image.archive),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ImageError(
            f"ctr images import {image.archive} ({image.reference}) failed: "
            f"{(result.stderr or result.stdout).strip()}"
        )
