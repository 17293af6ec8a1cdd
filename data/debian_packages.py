"""Debian binary packages (.deb) without a package manager: fetch pinned versions, verify, read files.

A .deb is an `ar` archive whose `data.tar.*` member holds the installed files; reading it here with
the standard library (instead of `dpkg-deb -x`) lets a machine with no dpkg build from a folder of
.deb files, and never writes the (sometimes huge: rust-doc unpacks to 590 MB) file tree to disk.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path


class PackageError(SystemExit):
    """A one-line reason to stop (a missing, changed or unreadable package)."""


@dataclass(frozen=True)
class Pin:
    """One source package of a corpus: which .deb, which files in it, and under what licence."""
    name: str
    version: str
    sha256: str  # of the .deb file
    licence: str  # of the files used, from the package's copyright file
    include: tuple[str, ...]  # glob patterns (fnmatch, `*` crosses `/`) of the member paths to read
    exclude: tuple[str, ...] = ()
    note: str = ""  # what the files are, for the corpus README

    @property
    def filename(self) -> str:  # as `apt-get download` names it (an epoch's colon is %3a)
        return f"{self.name}_{self.version.replace(':', '%3a')}_all.deb"

    def wants(self, path: str) -> bool:
        return (any(fnmatchcase(path, p) for p in self.include)
                and not any(fnmatchcase(path, p) for p in self.exclude))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(pin: Pin, folder: Path, latest: bool = False) -> Path:
    """The pinned .deb in `folder`, downloaded there with `apt-get download` when it is missing.

    With `latest`, any single NAME_*.deb already in the folder, or the version the archive serves now.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if latest:
        found = sorted(folder.glob(f"{pin.name}_*_all.deb"))
        if len(found) > 1:
            raise PackageError(f"{folder} holds {len(found)} versions of {pin.name}; keep one")
        if found:
            return found[0]
    path = folder / pin.filename
    if not path.exists():
        _download(pin, folder, latest)
        if latest:
            return fetch(pin, folder, latest=True)
    if not latest and sha256_file(path) != pin.sha256:
        raise PackageError(f"{path} is not the pinned {pin.name} {pin.version} (sha256 differs); delete it "
                           f"to download it again")
    return path


def _download(pin: Pin, folder: Path, latest: bool) -> None:
    if shutil.which("apt-get") is None:
        raise PackageError(f"{pin.filename} is not in {folder} and there is no apt-get here: copy the .deb "
                           f"files there from a machine that has them (see data/docs/README.md)")
    target = pin.name if latest else f"{pin.name}={pin.version}"
    # apt drops privileges to _apt while downloading; that user cannot write into a folder of root's.
    proc = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", target], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("E:")] or [proc.stderr.strip()]
        hint = ("pass --latest to take the version the archive serves now, or --debs DIR with the pinned file"
                if not latest else "run `apt-get update` first?")
        raise PackageError(f"cannot download {target} ({lines[0][:160]}): {hint}")


def _data_member(deb: Path) -> tuple[str, bytes]:
    """The name and bytes of the data.tar.* member of a .deb (a plain `ar` archive)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise PackageError(f"{deb} is not a .deb (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58])
        if name.startswith("data.tar"):
            return name, raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)  # members are padded to an even length
    raise PackageError(f"{deb} has no data.tar member")


def read_files(deb: Path, pin: Pin):
    """Yield (path, bytes) of the regular files of `deb` that `pin` wants, in the archive's order."""
    name, data = _data_member(deb)
    if name.endswith(".zst"):
        raise PackageError(f"{deb}: zstd-compressed data ({name}) is not readable by Python's tarfile")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:  # a stream: one pass, little memory
        for member in tar:
            path = member.name.removeprefix("./")
            if member.isfile() and pin.wants(path):
                yield path, tar.extractfile(member).read()
