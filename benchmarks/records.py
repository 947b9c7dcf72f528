"""One JSON record per benchmark run: what ran, on what, from which data and code, and what it measured.

Layout: one file per run, ``benchmarks/results/records/<benchmark>/<variant>/seed<k>-<config hash>.json``, where
``<variant>`` is the variant's label with characters other than letters, digits, ``.``, ``=``, ``-`` and ``/``
replaced by ``_`` (``/`` nests folders: ``ml-1m/sasrec``) and ``<config hash>`` is the first 10 hex digits of the
sha256 of the resolved config (canonical JSON). Running a variant again with the same config and seed replaces its
file (a partial record becomes the finished one); another config is another file. A record:

================  =====================================================================================
key               value
================  =====================================================================================
``benchmark``     the benchmark's name (``next_item``, ``long_ctr``, ...)
``variant``       the variant's label (``ml-1m/sasrec``)
``config``        the resolved config: the full model, data, optimizer and training settings of the run
``metrics``       what the run measured (JSON object)
``epochs``        epochs run (``null`` for measurements without training)
``seed``          the run's seed (``seeds``: a list, for a record over several seeds)
``machine``       :func:`machine`: CPU model, cores, GPUs, Python, TensorFlow and Keras versions
``command``       the argv of the command that wrote the record
``commit``        ``{"sha": git HEAD, "dirty": uncommitted changes to tracked files outside benchmarks/results}``
``date``          UTC, ISO 8601, when the record was written
``data_hash``     :func:`data_hash` of the input data files the run read
``partial``       ``true`` until the run finished its budget (``epochs`` then says how far it got)
================  =====================================================================================

Optional keys: ``converted_from`` (the results file a record was converted from; its ``machine``, ``command``,
``commit``, ``date`` and ``data_hash`` are ``null`` where the file did not have them, and ``command`` is the command
line string the file held), ``notes``.

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> record = make_record("toy", "a/b", {"model": {"name": "sasrec"}}, {"NDCG@10": 0.1}, epochs=3, seed=0,
    ...                      partial=False, data_files=[], command=["python", "toy.py"])
    >>> path = write_record(record, root)
    >>> os.path.relpath(path, root).startswith(os.path.join("toy", "a", "b", "seed0-"))
    True
    >>> [r["metrics"] for r in load_records(root, "toy")]
    [{'NDCG@10': 0.1}]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys

from benchmarks import _paths as paths
from benchmarks._timing import cpu_model

ROOT = os.path.join(paths.RESULTS, "records")
# outputs, relative to the checkout: a benchmark writing its records (or an earlier run's) leaves the code clean
RESULTS_IN_REPO = os.path.relpath(paths.RESULTS, paths.REPO)
REQUIRED = ("benchmark", "variant", "config", "metrics", "epochs", "machine", "command", "commit", "date",
            "data_hash", "partial")
# keys a converted record may hold as null: the results file it came from did not record them
UNKNOWN_WHEN_CONVERTED = ("machine", "command", "commit", "date", "data_hash")
NULLABLE = ("epochs",)  # a measurement without training


def config_hash(config: dict) -> str:
    """sha256 (hex) of ``config`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def data_hash(files) -> str:
    """``sha256:<hex>`` over the contents of ``files`` (paths; folders are walked), in sorted path order, each file's
    bytes preceded by its size as 8 little-endian bytes so that a boundary between files cannot move unnoticed."""
    found = []
    for path in files:
        if os.path.isdir(path):
            found += [os.path.join(d, name) for d, _, names in os.walk(path) for name in names]
        else:
            found.append(path)
    digest = hashlib.sha256()
    for path in sorted(found):
        digest.update(os.path.getsize(path).to_bytes(8, "little"))
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _gpu_name(tf, device) -> str:
    try:
        return tf.config.experimental.get_device_details(device).get("device_name", device.name)
    except (ValueError, RuntimeError):
        return device.name


def machine() -> dict:
    """CPU model, cores, GPUs (``[]`` without one; ``null`` without TensorFlow), Python, TensorFlow and Keras."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpus": None, "platform": platform.platform(),
            "python": sys.version.split()[0], "tensorflow": None, "keras": None}
    for module in ("tensorflow", "keras"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    if info["tensorflow"] is not None:
        import tensorflow as tf

        info["gpus"] = [_gpu_name(tf, d) for d in tf.config.list_physical_devices("GPU")]
    return info


def _git(repo: str, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def git_commit(repo: str = paths.REPO) -> dict:
    """``{"sha": HEAD, "dirty": tracked files changed outside RESULTS_IN_REPO}``; ``null`` values outside a git
    checkout."""
    try:
        return {"sha": _git(repo, "rev-parse", "HEAD"),
                "dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                   f":(exclude){RESULTS_IN_REPO}"))}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}


def package_tree(repo: str = paths.REPO, package: str = "tfmoe") -> str | None:
    """The git tree hash of ``package`` at HEAD: it changes exactly when the package's code does. ``None`` when the
    package has uncommitted changes (or outside a git checkout): nothing computed from it may then be cached."""
    try:
        if _git(repo, "status", "--porcelain", "--", package):
            return None
        return _git(repo, "rev-parse", f"HEAD:{package}")
    except (OSError, subprocess.CalledProcessError):
        return None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_record(benchmark: str, variant: str, config: dict, metrics: dict, *, epochs, seed, partial: bool,
                data_files, command=None, **extra) -> dict:
    """A record of this process's run (machine, commit, date and data hash taken now); ``seed`` an int, or a list
    for a record over several seeds; ``command`` defaults to ``sys.argv``; ``extra`` adds optional keys."""
    record = {"benchmark": benchmark, "variant": variant, "config": config, "metrics": metrics, "epochs": epochs,
              ("seeds" if isinstance(seed, (list, tuple)) else "seed"): list(seed) if isinstance(
                  seed, (list, tuple)) else seed,
              "machine": machine(), "command": list(sys.argv if command is None else command),
              "commit": git_commit(), "date": utc_now(), "data_hash": data_hash(data_files), "partial": bool(partial),
              **extra}
    return validate(json.loads(json.dumps(record)))


def validate(record: dict, source: str = "<record>") -> dict:
    """``record`` if it has the shape above, else ``ValueError`` naming the missing or malformed key and ``source``."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: a record is a JSON object, got {type(record).__name__}")
    for key in REQUIRED:
        if key not in record:
            raise ValueError(f"{source}: record is missing required key {key!r}")
    if "seed" not in record and "seeds" not in record:
        raise ValueError(f"{source}: record is missing required key 'seed' (or 'seeds')")
    converted = record.get("converted_from") is not None
    for key in REQUIRED:
        if record[key] is None and key not in NULLABLE and not (converted and key in UNKNOWN_WHEN_CONVERTED):
            raise ValueError(f"{source}: record key {key!r} is null")
    checks = {"benchmark": str, "variant": str, "config": dict, "metrics": dict, "partial": bool, "date": str,
              "machine": dict, "commit": dict, "data_hash": str, "epochs": (int, float)}
    for key, kind in checks.items():
        if record[key] is not None and not isinstance(record[key], kind):
            raise ValueError(f"{source}: record key {key!r} must be {getattr(kind, '__name__', 'a number')}, got "
                             f"{type(record[key]).__name__}")
    if converted and isinstance(record["command"], str):
        pass  # the command line as the source file recorded it
    elif record["command"] is not None and not isinstance(record["command"], list):
        raise ValueError(f"{source}: record key 'command' must be list, got {type(record['command']).__name__}")
    if record["commit"] is not None and not {"sha", "dirty"} <= set(record["commit"]):
        raise ValueError(f"{source}: record key 'commit' must hold 'sha' and 'dirty'")
    seed = record.get("seed", record.get("seeds"))
    if not (seed is None or isinstance(seed, int) or isinstance(seed, list) and all(isinstance(s, int) for s in seed)):
        raise ValueError(f"{source}: record key 'seed'/'seeds' must be an int or a list of ints, got {seed!r}")
    return record


def variant_dir(variant: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=\-/]", "_", variant).strip("/")


def record_path(record: dict, root: str = ROOT) -> str:
    seed = record.get("seed", record.get("seeds"))
    tag = "seeds" + "-".join(map(str, seed)) if isinstance(seed, list) else f"seed{seed}"
    return os.path.join(root, record["benchmark"], *variant_dir(record["variant"]).split("/"),
                        f"{tag}-{config_hash(record['config'])[:10]}.json")


def write_record(record: dict, root: str = ROOT) -> str:
    """Validates ``record`` and writes it (atomically) to its file under ``root``; returns the path."""
    from tfmoe.utils.files import write_atomic

    path = record_path(validate(record), root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def read_record(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    return validate(record, path)


def load_records(root: str = ROOT, benchmark: str | None = None) -> list[dict]:
    """Every record under ``root`` (of ``benchmark`` only if given), validated, in path order."""
    base = os.path.join(root, benchmark) if benchmark else root
    found = sorted(os.path.join(d, name) for d, _, names in os.walk(base) for name in names if name.endswith(".json"))
    return [read_record(path) for path in found]
