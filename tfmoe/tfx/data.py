"""The pipeline's input: the user's interaction logs or the built-in synthetic data, and their fingerprint (no TFX).

Example:
    >>> from tfmoe.tfx.config import PipelineConfig
    >>> from tfmoe.tfx.data import ensure_data
    >>> patterns, fmt = ensure_data(PipelineConfig(home="/tmp/tfmoe-doc", synthetic_preset="tiny"))
    >>> fmt, patterns[0].endswith("synthetic-tiny-seed0/interactions.csv")
    ('tfmoe-synthetic', True)
"""

from __future__ import annotations

import glob
import hashlib
import os

HASH_LIMIT = 1 << 30  # inputs larger than this in total are fingerprinted by size and mtime only


def ensure_data(config) -> tuple[list[str], str]:
    """``(input patterns, format)``: the configured logs, or the built-in synthetic data (written once)."""
    if config.data:
        return list(config.data), config.data_format
    from tfmoe.data import synthetic

    path = os.path.join(config.synthetic_dir, synthetic.INTERACTIONS_FILE)
    if not os.path.exists(path):
        data = synthetic.generate(synthetic.preset_config(config.synthetic_preset, seed=config.seed))
        synthetic.write_files(data, config.synthetic_dir)
    return [path], "tfmoe-synthetic"


def input_fingerprint(patterns) -> str:
    """A fingerprint of the files matching ``patterns``: sha256 of names, sizes and contents.

    Inputs over 1 GiB in total are fingerprinted by names, sizes and modification times instead.
    ``FileNotFoundError`` names a pattern that matches nothing; remote paths (``gs://``...) are not
    fingerprinted (the result says so, and the ingestion step then reruns only when its options change).
    """
    if any("://" in p for p in patterns):
        return "remote inputs: not fingerprinted"
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        matched = [m for m in matched if os.path.isfile(m)]
        if not matched:
            raise FileNotFoundError(f"no input file matches {pattern!r}")
        files.extend(matched)
    total = sum(os.path.getsize(f) for f in files)
    digest = hashlib.sha256()
    for path in files:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0".encode())
        if total > HASH_LIMIT:
            digest.update(str(stat.st_mtime_ns).encode())
            continue
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()} files={len(files)} bytes={total}"
