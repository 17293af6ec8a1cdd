"""Write a built corpus folder, or compare a fresh build with it (`--check`): for the corpus builders here."""
from __future__ import annotations

from pathlib import Path


def check_files(files: dict[str, bytes], folder: Path) -> int:
    """Print whether every file in `folder` equals the build; the exit status: 1 if any differs."""
    stale = [n for n, data in files.items() if not (folder / n).is_file() or (folder / n).read_bytes() != data]
    print("up to date" if not stale else f"differs: {', '.join(stale)}")
    return 1 if stale else 0


def write_files(files: dict[str, bytes], folder: Path) -> None:
    """Write each file atomically: a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)
