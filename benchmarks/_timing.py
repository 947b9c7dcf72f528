"""Small, generic timing helpers shared by the benchmarks.

* :func:`time_callable`: warm-up calls, then repeated timed calls; returns the median and spread.
* :func:`time_interleaved`: times several callables in alternating rounds (A, B, C, A, B, C, ...), so
  that load from other processes on a shared machine hits every candidate alike and the ratios
  between them stay meaningful even when absolute times drift.
* :func:`machine_info` and :func:`write_json`: what every results file records.

Callables must block until their work is done (e.g. end with ``.numpy()`` on a TensorFlow result).

Example:
    >>> from benchmarks._timing import time_callable
    >>> stats = time_callable(lambda: sum(range(1000)), warmup=1, repeats=3)
    >>> sorted(stats)
    ['max_s', 'median_s', 'min_s', 'repeats', 'times_s']
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

from tfmoe.utils.files import write_atomic


def _summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "times_s": [round(t, 6) for t in times],
    }


def time_callable(fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> dict:
    """Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; returns median/min/max/times."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_callable: need repeats >= 1 and warmup >= 0, got {repeats!r}, {warmup!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _summary(times)


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int = 2, rounds: int = 5) -> dict:
    """Times each named callable once per round, alternating; returns ``{name: summary}``."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"time_interleaved: need rounds >= 1 and warmup >= 0, got {rounds!r}, {warmup!r}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: _summary(values) for name, values in times.items()}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """Host, CPU, core count, load average and library versions (TensorFlow/Keras if importable)."""
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for module in ("numpy", "tensorflow", "keras"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    try:
        import tensorflow as tf

        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    return info


def read_json(path: str) -> dict:
    """The JSON object at ``path``, or ``{}`` when there is no file yet (results are merged into it)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def command_line(script: str) -> str:
    """``python <script> <this process's arguments>``: the command recorded in a results JSON."""
    return " ".join(["python", script, *sys.argv[1:]])


def write_json(path: str, payload: dict) -> str:
    """Writes ``payload`` as indented JSON (creating the folder; atomically: readers never see half a file);
    returns ``path``."""
    return write_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_json(path: str, sections: dict, meta: dict | None = None) -> dict:
    """Merges ``{section: {key: entry}}`` into the JSON object at ``path`` and returns the result: the file is
    read again under a lock just before writing, so processes that run at the same time (e.g. two ablations)
    each add their entries instead of writing back a stale copy; ``meta`` replaces ``"_meta"``."""
    with _locked(path):
        payload = read_json(path)
        for name, entries in sections.items():
            payload.setdefault(name, {}).update(entries)
        if meta is not None:
            payload["_meta"] = meta
        write_json(path, payload)
    return payload
