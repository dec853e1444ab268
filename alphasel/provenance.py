"""What produced a result and when: the versions of the code and the time, as every table, plan,
run and study records them."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """alphasel's and Python's version, then each of ``packages`` that is installed."""
    from alphasel import __version__

    versions = {"alphasel": __version__, "python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def utc_now() -> str:
    """The UTC time as records state it (ISO 8601, to the second)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
