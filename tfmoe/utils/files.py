"""Atomic file writes: readers (a polling model server, a resumed run, a report) never see half a file.

Example:
    >>> import os, tempfile
    >>> from tfmoe.utils.files import write_atomic
    >>> path = write_atomic(os.path.join(tempfile.mkdtemp(), "sub", "state.json"), '{"epoch": 3}')
    >>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
    ('{"epoch": 3}', ['state.json'])
"""

from __future__ import annotations

import os


def write_atomic(path: str, data: str | bytes) -> str:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary sibling and a rename, creating
    the folder; returns ``path``. Local paths use ``os.replace``; URLs (``gs://``, ``s3://``, ...) go through
    ``tf.io.gfile`` (TensorFlow is imported only for them)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    if "://" in path:
        import tensorflow as tf

        tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return path
    os.makedirs(folder or ".", exist_ok=True)
    try:
        with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:  # the old file stays as it was, and no temporary file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
