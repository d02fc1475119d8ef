"""Output files: checked before any long work starts, written whole or not at all.

:func:`check_output_file` / :func:`check_output_dir` raise :class:`~q8lib.errors.SettingsError`
for a path that cannot be written (wrong extension, a parent that is a file, a folder that is not
writable) without creating anything. :func:`atomic_path` and :func:`write_json` write to a
temporary name beside the target and rename it into place at the end, so an interrupted or
failed write never leaves a half-written mp4, JSON or checkpoint file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import SettingsError

__all__ = ["check_output_file", "check_output_dir", "atomic_path", "write_json"]


def _first_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists or can be created, and a file can be written in it (probed, nothing left behind)."""
    base = _first_existing(folder)
    if not base.is_dir():
        raise SettingsError(f"{what}: cannot create the folder {folder}, because {base} is a file; choose another path")
    try:  # os.access says yes to root on a read-only file system: really try
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise SettingsError(f"{what}: the folder {base} is not writable ({e.strerror or e}); choose another path") from None


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str = "--output") -> Path:
    """Check that ``path`` ends in one of ``suffixes`` and can be written; returns it as a ``Path``."""
    if path is None or str(path).strip() == "":
        raise SettingsError(f"{what} is empty; give a file name ending in {' or '.join(suffixes)}")
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise SettingsError(f"{what} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if p.is_dir():
        raise SettingsError(f"{what} {str(path)!r} is a folder; give a file name ending in {' or '.join(suffixes)}")
    _check_writable_folder(p.parent, what)
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``path`` is (or can become) a writable folder; returns it as a ``Path``."""
    if path is None or str(path).strip() == "":
        raise SettingsError(f"{what} is empty; give a folder")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise SettingsError(f"{what} {str(path)!r} is a file; give a folder")
    _check_writable_folder(p, what)
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` (same extension); rename it to ``path`` if the block succeeds,
    remove it if the block raises. The parent folder is created first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically (:func:`atomic_path`)."""
    text = json.dumps(obj, indent=2, default=str) + "\n"  # serialise first: a failure writes nothing
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
