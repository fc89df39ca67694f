"""The cellguard image, built from the repository's Dockerfile without a registry or a daemon.

No registry is reachable from the development machine, so the Dockerfile's `PYTHON_IMAGE`
(`python:3.11-slim` by default) is replaced by a local equivalent: Debian bookworm made by
`debootstrap --variant=minbase` with Debian's Python 3.11 and venv, and pip and setuptools
installed into /usr/local from the wheels python3-venv ships (what the Dockerfile's two
stages call, where the official image has them, so its `pip uninstall` removes them),
trimmed as the slim images are (no apt lists, caches, documentation, man pages or
translations) and without Debian's EXTERNALLY-MANAGED marker. It is committed into
buildah's storage as `BASE_IMAGE`; then `buildah build --layers` builds the Dockerfile as
written, with the base passed as the `PYTHON_IMAGE` build-arg (the builder stage downloads
the build backend and the dependencies from PyPI, as `docker build` would). The result is
written as a docker-archive, which `ctr -n k8s.io images import` takes. RUN steps use
buildah's chroot isolation: the host's network (no CNI configuration for buildah to need)
and no OCI runtime (oci isolation with runc was not tried here).

Everything is cached under `~/.cache/cellguard/images` (the debootstrapped root filesystem
as a tar) and `~/.cache/cellguard/buildah` (buildah's own storage: layers of both stages), so
a second build with an unchanged context takes seconds. Debian's `buildah` and
`debootstrap` are installed by `scripts/ensure-debian-packages.sh`. Root only (debootstrap,
buildah's overlay storage).

    built = build_cellguard_image(progress=print)    # BuiltImage(reference, archive, ...)
    import_image(built.packed(), node.socket)         # into a real node's containerd
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cellguard import __version__
from cellguard.devcluster.ociimage import PackedImage
from cellguard.devcluster.toolchain import cache_dir, repo_root

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the Dockerfile needs from `python:3.11-slim`: `python`, `python -m venv`, and pip,
# setuptools in /usr/local as the official image has them (installed from the wheels
# python3-venv brings, so that `pip uninstall` can remove them as it does there; Debian's
# own python3-pip would stay, owned by dpkg).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_PIP_PACKAGES = ("pip", "setuptools")
# Trimmed as the slim images are; paths inside the root filesystem.
BASE_TRIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/lib/python3.11/EXTERNALLY-MANAGED",
)
# Bump when the recipe changes in a way the key below does not see.
_BASE_RECIPE = 2
BASE_IMAGE = "localhost/cellguard-python:3.11-slim-bookworm"
IMAGE = f"localhost/cellguard:{__version__}"
BUILDER_CACHE = "localhost/cellguard-builder:cache"
# The chart's hook Job and `helm test` pod need kubectl and /bin/sh.
KUBECTL_IMAGE = "localhost/cellguard-kubectl:local"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuiltImage:
    """An image in buildah's storage and as a docker-archive for `ctr images import`."""

    reference: str
    image_id: str
    archive: Path
    size_bytes: int  # uncompressed, all layers (what `buildah images` reports)
    seconds: float  # this call: building (or finding it built) and writing the archive

    def packed(self) -> PackedImage:
        return PackedImage(self.reference, self.archive, self.image_id)


def images_cache() -> Path:
    return cache_dir() / "images"


def supports_image_build() -> str | None:
    """None when this machine can build the image, else what is missing (one sentence)."""
    if os.geteuid() != 0:
        return "building the image needs root (debootstrap, buildah's overlay storage)"
    missing = [
        tool
        for tool in ("buildah", "debootstrap")
        if not (shutil.which(tool) or Path("/usr/sbin", tool).is_file())
    ]
    if missing:
        return f"no {', '.join(missing)}: run scripts/ensure-debian-packages.sh"
    if repo_root() is None:
        return "building the image needs a cellguard checkout (the Dockerfile and its context)"
    return None


class Buildah:
    """buildah with storage of its own under the cache (never the machine's default)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "buildah"
        # runroot: locks and mount state of this storage, gone at reboot like /run itself.
        self.runroot = Path("/run") / f"cellguard-buildah-{_key(str(self.root))[:8]}"

    def command(self, *args: str) -> list[str]:
        return [
            "buildah",
            f"--root={self.root / 'storage'}",
            f"--runroot={self.runroot}",
            "--storage-driver=overlay",
            *args,
        ]

    def run(
        self,
        *args: str,
        timeout: float = 1800.0,
        progress: Callable[[str], None] | None = None,
    ) -> str:
        """Run buildah; its output streams to `progress` line by line when given."""
        env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
        process = subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        lines = []
        deadline = time.monotonic() + timeout
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if progress is not None:
                progress("  " + line.rstrip())
            if time.monotonic() > deadline:
                process.kill()
        code = process.wait()
        output = "".join(lines)
        if code != 0:
            raise ImageBuildError(
                f"buildah {' '.join(args[:2])} failed ({code}):\n{output[-4000:]}"
            )
        return output

    def label(self, reference: str, name: str) -> str | None:
        try:
            text = self.run("inspect", "--type=image", reference, timeout=60)
        except ImageBuildError:
            return None
        labels = json.loads(text).get("OCIv1", {}).get("config", {}).get("Labels") or {}
        value = labels.get(name)
        return str(value) if value is not None else None


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def base_key() -> str:
    return _key(_BASE_RECIPE, DEBIAN_SUITE, BASE_PACKAGES, BASE_PIP_PACKAGES, BASE_TRIM, _PATH)


def _debootstrap(rootfs: Path, progress: Callable[[str], None]) -> None:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    command = [
        debootstrap,
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        DEBIAN_SUITE,
        str(rootfs),
        DEBIAN_MIRROR,
    ]
    progress(f"debootstrap {DEBIAN_SUITE} + {', '.join(BASE_PACKAGES)} (about a minute) ...")
    with tempfile.TemporaryFile("w+") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            log.seek(0)
            tail = log.read()[-3000:]
            raise ImageBuildError(f"debootstrap failed ({result.returncode}):\n{tail}")
    for relative in BASE_TRIM:
        path = rootfs / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir()
        elif path.exists():
            path.unlink()
    wheels = sorted((rootfs / "usr/share/python-wheels").glob("pip-*.whl"))
    if not wheels:
        raise ImageBuildError("python3-venv brought no pip wheel to install pip from")
    # pip run from its own wheel, in the root filesystem, with no network and no settings
    # of this machine's: into /usr/local/lib/python3.11/dist-packages, /usr/local/bin/pip.
    install = subprocess.run(
        [
            "chroot", str(rootfs), "python3", f"/usr/share/python-wheels/{wheels[-1].name}/pip",
            "install", "--no-index", "--find-links=/usr/share/python-wheels", "--no-cache-dir",
            "--disable-pip-version-check", "--no-warn-script-location", *BASE_PIP_PACKAGES,
        ],
        capture_output=True, text=True, check=False,
        env={"PATH": _PATH, "LANG": "C.UTF-8", "HOME": "/root"},
    )  # fmt: skip
    if install.returncode != 0:
        raise ImageBuildError(f"installing pip in the base failed:\n{install.stderr[-2000:]}")
    # apt leaves a partial/ directory it expects; an empty one is enough.
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def ensure_python_base(
    buildah: Buildah | None = None, progress: Callable[[str], None] = lambda _m: None
) -> str:
    """`BASE_IMAGE` in buildah's storage, made once from a cached debootstrap root filesystem."""
    buildah = buildah or Buildah()
    key = base_key()
    if buildah.label(BASE_IMAGE, "io.cellguard.base-key") == key:
        return BASE_IMAGE
    cache = images_cache()
    cache.mkdir(parents=True, exist_ok=True)
    rootfs_tar = cache / f"python-base-{key}.tar"
    if not rootfs_tar.is_file():
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
        try:
            _debootstrap(work / "rootfs", progress)
            partial = rootfs_tar.with_suffix(".tar.partial")
            with tarfile.open(partial, "w") as archive:
                archive.add(work / "rootfs", arcname=".")
            partial.rename(rootfs_tar)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in cache.glob("python-base-*.tar"):  # earlier recipes'
            if old != rootfs_tar:
                old.unlink()
    context = Path(tempfile.mkdtemp(prefix="base-context-", dir=cache))
    try:
        os.link(rootfs_tar, context / "rootfs.tar")
        (context / "Containerfile").write_text(
            "FROM scratch\n"
            "ADD rootfs.tar /\n"
            f"ENV PATH={_PATH} LANG=C.UTF-8\n"
            f'LABEL io.cellguard.base-key="{key}" '
            f'org.opencontainers.image.description="Debian {DEBIAN_SUITE} (debootstrap '
            f'minbase) with {" ".join(BASE_PACKAGES)}"\n'
            'CMD ["python3"]\n'
        )
        progress(f"committing the base image {BASE_IMAGE} ...")
        buildah.run("build", "--layers=false", "-t", BASE_IMAGE, str(context), timeout=600)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return BASE_IMAGE


def _trust_mounts() -> list[str]:
    """The machine's CA bundle over the base's, read-only and only while RUN steps run (it
    is not in any layer): where outgoing TLS is intercepted by a proxy whose CA this
    machine trusts, pip in the builder stage reaches PyPI as `pip` on the machine does.
    Debian's pip (and the one `venv` installs) use this system bundle."""
    bundle = Path(os.environ.get("SSL_CERT_FILE") or HOST_CA_BUNDLE)
    if not bundle.is_file():
        return []
    return [f"--volume={bundle.resolve()}:{HOST_CA_BUNDLE}:ro"]


def _git_revision(root: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _export(buildah: Buildah, reference: str) -> tuple[str, int, Path]:
    """The image's id, its size (its layers, uncompressed: the docker-archive's size) and a
    docker-archive of it for `ctr images import` (written once per image id)."""
    try:
        image_id = buildah.run(
            "inspect", "--type=image", "--format={{.FromImageID}}", reference, timeout=60
        ).strip()
    except ImageBuildError as error:
        raise ImageBuildError(f"{reference} is not in buildah's storage: {error}") from None
    name = reference.rsplit("/", 1)[-1].replace(":", "-")
    archive = images_cache() / f"{name}-{image_id[:16]}.tar"
    if not archive.is_file():
        partial = archive.with_suffix(".tar.partial")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        buildah.run("push", "--quiet", reference, f"docker-archive:{partial}:{reference}")
        partial.rename(archive)
        for old in images_cache().glob(f"{name}-*.tar"):  # one archive per image name
            if old != archive:
                old.unlink()
    return image_id, archive.stat().st_size, archive


def build_cellguard_image(
    *,
    reference: str = IMAGE,
    buildah: Buildah | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    extra_args: Sequence[str] = (),
) -> BuiltImage:
    """Build the repository's Dockerfile on the local Python base; cached by buildah's layers."""
    reason = supports_image_build()
    if reason is not None:
        raise ImageBuildError(reason)
    root = repo_root()
    assert root is not None
    buildah = buildah or Buildah()
    started = time.monotonic()
    with build_lock(buildah):
        return _build_cellguard_image(root, reference, buildah, progress, extra_args, started)


def _build_cellguard_image(
    root: Path,
    reference: str,
    buildah: Buildah,
    progress: Callable[[str], None],
    extra_args: Sequence[str],
    started: float,
) -> BuiltImage:
    base = ensure_python_base(buildah, progress)
    progress(f"buildah build {root / 'Dockerfile'} (PYTHON_IMAGE={base}) ...")
    common = [
        "build",
        "--layers",
        "--network=host",
        *_trust_mounts(),
        f"--build-arg=PYTHON_IMAGE={base}",
        f"--build-arg=VERSION={__version__}",
        f"--build-arg=REVISION={_git_revision(root)}",
        "-f",
        str(root / "Dockerfile"),
        *extra_args,
    ]
    # The builder stage tagged too: its layers are the cache a rebuild with the same
    # context reuses, and a tag keeps them through the prune below.
    buildah.run(*common, "--target=builder", "-t", BUILDER_CACHE, str(root), progress=progress)
    buildah.run(*common, "-t", reference, str(root), progress=progress)
    image_id, size, archive = _export(buildah, reference)
    prune(buildah)
    return BuiltImage(reference, image_id, archive, size, time.monotonic() - started)


def prune(buildah: Buildah | None = None) -> None:
    """Drop images nothing tagged needs any more (earlier builds of a changed context):
    without it buildah's storage grows by an image's size with every change of operator/.
    Best effort; call it holding `build_lock()`."""
    with contextlib.suppress(ImageBuildError):
        (buildah or Buildah()).run("rmi", "--prune", timeout=300)


@contextlib.contextmanager
def build_lock(buildah: Buildah | None = None) -> Iterator[None]:
    """One build at a time in the cache's buildah storage (other sessions and processes
    wait), and working containers a killed build left behind are removed first."""
    path = cache_dir() / "buildah.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.suppress(ImageBuildError):
                (buildah or Buildah()).run("rm", "--all", timeout=120)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_kubectl_image(
    kubectl: Path,
    *,
    reference: str = KUBECTL_IMAGE,
    buildah: Buildah | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> BuiltImage:
    """An image with `kubectl` (the toolchain's) and /bin/sh, for the chart's kubectl pods
    (the default-policy hook Job, `helm test`): the local base plus one file."""
    reason = supports_image_build()
    if reason is not None:
        raise ImageBuildError(reason)
    buildah = buildah or Buildah()
    started = time.monotonic()
    with build_lock(buildah):
        base = ensure_python_base(buildah, progress)
        context = Path(tempfile.mkdtemp(prefix="kubectl-context-", dir=images_cache()))
        try:
            shutil.copy2(kubectl, context / "kubectl")
            (context / "Containerfile").write_text(
                f"FROM {base}\nCOPY kubectl /usr/local/bin/kubectl\nUSER 65534:65534\n"
                'ENTRYPOINT ["kubectl"]\n'
            )
            buildah.run("build", "--layers", "-t", reference, str(context), progress=progress)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        image_id, size, archive = _export(buildah, reference)
        prune(buildah)
    return BuiltImage(reference, image_id, archive, size, time.monotonic() - started)
