"""Package data (the shipped configs, committed measurements the reports read), found through
:mod:`importlib.resources`, so that an installed copy (``pip install .``, not only an editable
checkout) finds it too."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["package_dir", "package_file"]


def package_dir(package: str, *parts: str) -> Path:
    """The folder ``parts`` of ``package``'s data as a file-system path (packages are installed
    as folders: pip unpacks wheels)."""
    return Path(str(files(package).joinpath(*parts)))


def package_file(package: str, *parts: str) -> Path | None:
    """The data file ``parts`` of ``package``, or ``None`` when the package does not ship it."""
    path = package_dir(package, *parts)
    return path if path.is_file() else None
