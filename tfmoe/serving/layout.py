"""The on-disk layout TF Serving reads: ``<base_path>/<integer version>/saved_model.pb + variables/``.

* A version is a sub-directory whose name is a non-negative integer; anything else (such as the
  ``.staging-...`` directories written here) is ignored by TF Serving and by the local server.
* A version is *complete* once ``saved_model.pb`` exists: writers put it in place last (the TFX
  Pusher copies it last; :func:`publish` renames a finished directory in one step).
* :func:`publish` and :func:`push_copy` make a version appear atomically: everything is written
  into a staging directory next to the versions, then renamed to ``<base_path>/<version>``.

Example:
    >>> import tempfile, os
    >>> from tfmoe.serving import layout
    >>> base = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(base, "3")); open(os.path.join(base, "3", "saved_model.pb"), "wb").close()
    >>> os.makedirs(os.path.join(base, "4"))  # still being copied: no saved_model.pb yet
    >>> layout.complete_versions(base), layout.next_version(base)
    ([3], 5)
"""

from __future__ import annotations

import os
import shutil
import uuid

from tfmoe.serving.saved_model_proto import SAVED_MODEL_PB

STAGING_PREFIX = ".staging-"


def _version_of(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def versions(base_path) -> list[int]:
    """Every integer-named sub-directory of ``base_path``, complete or not, sorted ascending."""
    base_path = os.fspath(base_path)
    if not os.path.isdir(base_path):
        return []
    found = []
    for entry in os.scandir(base_path):
        version = _version_of(entry.name)
        if version is not None and entry.is_dir():
            found.append(version)
    return sorted(found)


def version_path(base_path, version: int) -> str:
    return os.path.join(os.fspath(base_path), str(int(version)))


def is_complete(version_dir) -> bool:
    """Whether ``version_dir`` holds ``saved_model.pb`` (writers put it there last)."""
    return os.path.isfile(os.path.join(os.fspath(version_dir), SAVED_MODEL_PB))


def complete_versions(base_path) -> list[int]:
    """The versions of ``base_path`` that can be loaded, sorted ascending."""
    return [v for v in versions(base_path) if is_complete(version_path(base_path, v))]


def next_version(base_path) -> int:
    """One more than the largest version directory (complete or not), or 1."""
    existing = versions(base_path)
    return existing[-1] + 1 if existing else 1


def staging_dir(base_path, version: int) -> str:
    """A fresh staging path inside ``base_path`` (same filesystem, so the final rename is atomic)."""
    return os.path.join(os.fspath(base_path), f"{STAGING_PREFIX}{int(version)}-{uuid.uuid4().hex[:12]}")


def publish(staging: str, base_path, version: int) -> str:
    """Renames a finished ``staging`` directory to ``<base_path>/<version>``; returns the final path.

    Raises ``FileExistsError`` if that version exists (a version is never overwritten in place)
    and ``ValueError`` if ``staging`` lacks ``saved_model.pb``.
    """
    final = version_path(base_path, version)
    if not is_complete(staging):
        raise ValueError(f"publish: {staging!r} has no {SAVED_MODEL_PB}; refusing to publish an incomplete version")
    if os.path.exists(final):
        raise FileExistsError(f"publish: version {version} already exists at {final!r}; versions are immutable, "
                              "export a new version number")
    os.rename(staging, final)
    return final


def push_copy(source_dir, base_path, version: int) -> str:
    """Copies a SavedModel directory to ``<base_path>/<version>`` atomically (what a pusher does).

    The copy goes to a staging directory first; a failed copy leaves no version behind.
    """
    source_dir = os.fspath(source_dir)
    if not is_complete(source_dir):
        raise ValueError(f"push_copy: {source_dir!r} is not a SavedModel directory (no {SAVED_MODEL_PB})")
    os.makedirs(os.fspath(base_path), exist_ok=True)
    staging = staging_dir(base_path, version)
    try:
        shutil.copytree(source_dir, staging)
        return publish(staging, base_path, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
