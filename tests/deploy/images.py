"""The images the deploy tests run, built with podman from Debian packages alone (no container
registry): a Debian-made base (mmdebstrap), the project's image from deploy/image/Containerfile
on it, and, for the systemd test, the same virtualenv on a base that also has systemd.

Everything is cached in podman's own storage: a base is made only when no image carries its
tag (the tag is a digest of what goes into it), and the project image is rebuilt by
`podman build`, whose layer cache reuses every step whose inputs did not change. Run alone,
`.venv/bin/python -m tests.deploy.images` builds (or finds) them and prints each step's time;
`--cold` makes the bases again and builds without the layer cache, to time a cold build.

Podman on this machine kind (cgroups v1, no systemd as PID 1) needs the runc runtime and
explicit ulimits; pip inside a build trusts the machine's CA bundle, given as a build secret
(never in a layer; docs/deploy.md).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "image" / "Containerfile"
IGNOREFILE = ROOT / "deploy" / "image" / "Containerfile.dockerignore"
SYSTEMD_CONTAINERFILE = Path(__file__).with_name("systemd.Containerfile")
UNITS = ROOT / "deploy" / "systemd"

PODMAN = ("podman", "--runtime", "runc")
# crun cannot set these limits here and refuses cgroups v1 in hybrid mode: runc with explicit
# limits works for `podman run` and `podman build` alike.
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

SUITE = "bookworm"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# What the Containerfile needs of its base (the official python:3.11-slim has it): Python
# 3.11 with venv, CA certificates, useradd. No time-zone data, on purpose: the image must
# bring its own (PyPI tzdata), and the tests show that it does.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
SYSTEMD_PACKAGES = (*BASE_PACKAGES, "systemd")
MMDEBSTRAP_OPTIONS = (
    "--variant=essential",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # no perl for usrmerge
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BASE_REPOSITORY = "localhost/lmnh-debian-base"
IMAGE = "localhost/lmnh:test"
SYSTEMD_IMAGE = "localhost/lmnh-systemd:test"
LOCK_FILE = Path(tempfile.gettempdir()) / "lmnh-deploy-images.lock"


@dataclass(frozen=True)
class Built:
    """An image the tests use, and what it took to have it."""

    tag: str
    seconds: float
    cached: bool  # found in podman's storage (a base) or every build step cached (a build)


def unavailable() -> str | None:
    """Why these images cannot be built here, or None."""
    if sys.platform != "linux":
        return "the deploy tests need Linux (podman, mmdebstrap)"
    if os.geteuid() != 0:
        return (
            "the deploy tests need root: podman with runc and mmdebstrap run as root here"
            " (./run_tests.sh as root installs them)"
        )
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return (
            f"the deploy tests need {', '.join(missing)}"
            " (apt-get install podman mmdebstrap runc; ./run_tests.sh does it as root)"
        )
    return None


def podman(
    *args: str,
    timeout: float = 600,
    check: bool = True,
    capture: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PODMAN, *args],
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)} exited {result.returncode}:\n"
            f"{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}"
        )
    return result


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


@contextmanager
def _exclusive() -> Iterator[None]:
    """One builder at a time on this machine (two pytest runs would race for the tags)."""
    with LOCK_FILE.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _sources() -> list[str]:
    """The machine's own Debian sources when it has them (its mirror, its security suite)."""
    return [str(DEBIAN_SOURCES)] if DEBIAN_SOURCES.is_file() else []


def base_tag(packages: Sequence[str]) -> str:
    """The base's tag: a digest of everything that goes into it."""
    recipe = "\n".join(
        [SUITE, *packages, *MMDEBSTRAP_OPTIONS, PATH, *(Path(s).read_text() for s in _sources())]
    )
    return f"{BASE_REPOSITORY}:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def debian_base(packages: Sequence[str] = BASE_PACKAGES, *, cold: bool = False) -> Built:
    """A base image made by mmdebstrap from Debian's packages, made once (or again, `cold`)
    and kept in podman's storage under a tag that names its recipe."""
    tag = base_tag(packages)
    started = time.monotonic()
    with _exclusive():
        if image_exists(tag) and not cold:
            return Built(tag, time.monotonic() - started, cached=True)
        with tempfile.TemporaryDirectory(prefix="lmnh-base-") as work:
            tarball = Path(work) / "rootfs.tar"
            subprocess.run(
                [
                    "mmdebstrap",
                    "--quiet",
                    *MMDEBSTRAP_OPTIONS,
                    f"--include={','.join(packages)}",
                    SUITE,
                    str(tarball),
                    *_sources(),
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
            before = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
            podman("import", "--change", f"ENV PATH={PATH}", str(tarball), tag)
            if before.returncode == 0:  # made again (cold): the old one, unless still in use
                podman("rmi", before.stdout.strip(), check=False)
    return Built(tag, time.monotonic() - started, cached=False)


def build_args() -> list[str]:
    """The machine's CA bundle for pip inside the build (pip's own fails here), as a build
    secret: mounted for the pip steps only, never in a layer."""
    if not HOST_CA.is_file():
        return []
    return ["--secret", f"id=pip-ca,src={HOST_CA}"]


def _build(*args: str, tag: str, cold: bool) -> Built:
    """`podman build` with its layer cache (or none, `cold`). The image the tag named before,
    when the build made a new one, is removed with the layers only it used, so that podman's
    storage does not grow with every change of the sources."""
    before = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    started = time.monotonic()
    with _exclusive():
        podman(
            "build",
            *LIMITS,
            "--layers",
            "--pull=never",
            *(["--no-cache"] if cold else []),
            "-t",
            tag,
            *args,
        )
        after = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        if before and before != after:
            podman("rmi", before, check=False)
    return Built(tag, time.monotonic() - started, cached=before == after)


def project_image(base: str, *, cold: bool = False) -> Built:
    """deploy/image/Containerfile built on `base`, as a user would build it on theirs."""
    return _build(
        "-f",
        str(CONTAINERFILE),
        "--ignorefile",
        str(IGNOREFILE),
        "--build-arg",
        f"BASE={base}",
        *build_args(),
        str(ROOT),
        tag=IMAGE,
        cold=cold,
    )


def systemd_image(app: str, systemd_base: str, *, cold: bool = False) -> Built:
    """The project image's virtualenv on a base with systemd, to run the units for real."""
    return _build(
        "-f",
        str(SYSTEMD_CONTAINERFILE),
        "--build-arg",
        f"APP={app}",
        "--build-arg",
        f"BASE={systemd_base}",
        str(SYSTEMD_CONTAINERFILE.parent),
        tag=SYSTEMD_IMAGE,
        cold=cold,
    )


def image_size_mb(tag: str) -> float:
    """The image's size as podman counts it (all its layers, uncompressed), in MB."""
    size = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    return int(size) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.images", description=__doc__)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="make the Debian bases again and build without podman's layer cache",
    )
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    base = debian_base(BASE_PACKAGES, cold=args.cold)
    systemd_base = debian_base(SYSTEMD_PACKAGES, cold=args.cold)
    image = project_image(base.tag, cold=args.cold)
    systemd = systemd_image(image.tag, systemd_base.tag, cold=args.cold)
    for built in (base, systemd_base, image, systemd):
        how = "cached" if built.cached else "built"
        print(f"{built.tag}: {how} in {built.seconds:.1f} s, {image_size_mb(built.tag):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
