"""Serving load test: latency and throughput over gRPC on loopback while a new model version is pushed.

Exports version 1 of a next-item model (or takes an existing export), starts a model server on a
free loopback port (the real ``tensorflow_model_server`` if it is on PATH, else the local model
server, with the same flags), then runs two bounded phases of concurrent clients, each sending
``top_k`` requests (raw ``[batch, max_len]`` histories, the online path) back to back:

1. batch 1 (one user per request), 2. batch 64 (64 users per request).

Halfway through each phase a new version is pushed the way the TFX Pusher does it (copied into
a staging directory, then renamed into place); the server loads and warms it up, switches to it
and unloads the old one while the clients keep going. Clients do not retry, so every request the
swap breaks is counted in ``failed_requests`` (the goal is zero). Each phase stops after
``--duration`` seconds or ``--max-requests`` requests, whichever comes first.

The model comes from one of:

* default: SASRec as for ML-1M (``num_items`` 3416, ``max_len`` 200, hidden 64, 2 blocks), with
  random weights (latency does not depend on the weights), exported without a hand-written spec
  (:func:`tfmoe.serving.model_specs.spec_for_model`); every request carries full 200-item histories;
* ``--model-factory module:function``: ``function()`` returns ``(keras_model, ServingSpec)``;
  versions are exported with :func:`tfmoe.serving.export.export_model` (the way to plug in SASRec);
* ``--export-fn module:function``: ``function(base_path, version)`` writes that version itself;
* ``--model-dir DIR``: an existing base path; its latest version is served and re-pushed as new
  version numbers;
* ``--quick``: a small demo model (:mod:`tfmoe.serving.demo_models`), short phases, and the JSON goes to
  a temp file unless ``--out`` is given (a toy model's numbers are not results).

Version 1 is exported once; the pushed versions are copies of it under new version numbers (the
server loads, warms up, switches and unloads exactly as for new weights, without paying for more
exports during the run). The load average of the machine is sampled every second of each phase
(the cores may be shared). Writes ``{"batch1": {"p50_ms", "p99_ms", "qps", ..., "during_swap":
{...}}, "batch64": {...}, "failed_requests": n, "requests": total, "config": {...}, "machine": {...},
"load_average": {...}}`` (default
``benchmarks/results/serving.json``). Goal for SASRec with a 200-item history on 2 cores:
zero failed requests and ``batch1.p99_ms`` under 20.

Usage:
    .venv/bin/python benchmarks/serving.py                 # SASRec, 2 phases of 30 s
    .venv/bin/python benchmarks/serving.py --quick         # smoke run on a toy model
    .venv/bin/python benchmarks/serving.py --model-factory mypackage.models:serving_model
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._timing import machine_info, write_json  # noqa: E402

MODEL_NAME = "recs"
SIGNATURE = "top_k"
HISTORY = "history"
BATCH_SIZES = (1, 64)
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "serving.json")
REQUEST_POOL = 64  # distinct pre-built requests per phase, cycled by the clients


def load_callable(dotted: str):
    """``"package.module:function"`` -> the function."""
    module, sep, name = dotted.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected module:function, got {dotted!r}")
    return getattr(importlib.import_module(module), name)


SASREC = {"num_items": 3416, "max_len": 200, "hidden_dim": 64, "num_blocks": 2}  # ML-1M sized


def sasrec_factory():
    """SASRec with random weights and the spec derived from it (``top_k`` 10)."""
    from tfmoe.models import SASRec
    from tfmoe.serving.model_specs import spec_for_model

    model = SASRec(**SASREC, seed=0)
    return model, spec_for_model(model, top_k=10)


def quick_factory():
    from tfmoe.serving import demo_models

    num_items, max_len = 1000, 50
    return (demo_models.next_item_model(num_items, max_len, dim=16, seed=0),
            demo_models.next_item_spec(num_items, max_len, top_k=10))


class VersionSource:
    """Writes version ``v`` of the benchmarked model into a base path (export, export-fn or copy)."""

    def __init__(self, args, workdir: str):
        self.workdir = workdir
        self.num_items = args.num_items
        self.jit_compile = args.xla
        if args.model_dir:
            from tfmoe.serving import layout

            versions = layout.complete_versions(args.model_dir)
            if not versions:
                raise ValueError(f"--model-dir {args.model_dir!r} has no complete version directory")
            self.source_dir = layout.version_path(args.model_dir, versions[-1])
            self.write = self._copy
        elif args.export_fn:
            self.export_fn = load_callable(args.export_fn)
            self.write = self._export_fn
        else:
            factory = (load_callable(args.model_factory) if args.model_factory else
                       quick_factory if args.quick else sasrec_factory)
            self.model, self.spec = factory()
            self.write = self._export
            history = self.spec.feature(self.spec.history_feature)
            self.num_items = self.num_items or (history.vocab_size - 1 if history.vocab_size else None)
        if not self.num_items:
            raise ValueError("give --num-items (ids are drawn from 1..num_items)")

    def _export(self, base_path: str, version: int) -> None:
        from tfmoe.serving.export import export_model

        export_model(self.model, base_path, self.spec, version=version, model_name=MODEL_NAME,
                     warmup_batch_sizes=BATCH_SIZES, jit_compile=self.jit_compile)

    def _export_fn(self, base_path: str, version: int) -> None:
        self.export_fn(base_path, version)

    def _copy(self, base_path: str, version: int) -> None:
        from tfmoe.serving import layout

        layout.push_copy(self.source_dir, base_path, version)




def push(staged_dir: str, base_path: str, version: int) -> None:
    from tfmoe.serving import layout

    layout.push_copy(staged_dir, base_path, version)


def build_requests(num_items: int, max_len: int, batch_size: int, seed: int, history_len: int | None = None) -> list:
    """Pre-built ``top_k`` requests with random histories of ids 1..num_items.

    Every history has ``history_len`` items (default ``max_len``: full histories), or, with
    ``history_len=0``, a random length in 1..max_len.
    """
    from tfmoe.serving import requests

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(REQUEST_POOL):
        lengths = (rng.integers(1, max_len + 1, size=batch_size) if history_len == 0 else
                   np.full(batch_size, min(history_len or max_len, max_len)))
        histories = [rng.integers(1, num_items + 1, size=n) for n in lengths]
        pool.append(requests.predict_request(MODEL_NAME, {
            HISTORY: requests.pad_histories(histories, max_len),
            "exclude_seen": np.ones(batch_size, bool)}, signature=SIGNATURE))
    return pool


def latency_stats(seconds: list, wall: float | None = None) -> dict:
    """p50 / p99 / mean / max in ms (and qps over ``wall`` seconds) of request latencies."""
    ms = sorted(1000 * t for t in seconds)
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None, "requests": 0}
    stats = {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
             "mean_ms": round(statistics.fmean(ms), 3), "max_ms": round(ms[-1], 3), "requests": len(ms)}
    if wall:
        stats["qps"] = round(len(ms) / wall, 1)
    return stats


def run_phase(target: str, pool: list, clients: int, duration: float, max_requests: int, timeout: float,
              on_halfway, new_version: int, swap_timeout: float = 120.0, settle: float = 2.0) -> dict:
    """``clients`` threads send ``pool`` requests back to back; ``on_halfway()`` pushes ``new_version`` mid-phase.

    The phase ends after ``duration`` seconds (or ``max_requests``), but not before a response
    from ``new_version`` was seen (at most ``swap_timeout`` seconds longer), so the swap always
    happens under load. ``during_swap``: the requests sent from the push until ``settle`` seconds
    after the first answer of the new version (load, warmup, switch and the old version's unload).
    """
    from tfmoe.serving.client import ServingClient
    from tfmoe.serving.errors import ServingError

    samples, failures, versions = [], [], []  # samples: (start offset s, latency s)
    lock = threading.Lock()
    sent = [0]
    marks = {}  # "pushed" / "first_new": offsets in s
    stop = threading.Event()
    started = time.perf_counter()

    def worker(index: int) -> None:
        with ServingClient(target, timeout=timeout, retries=0) as client:
            i = index
            while not stop.is_set():
                with lock:
                    if sent[0] >= max_requests and new_version in versions:
                        break
                    sent[0] += 1
                request = pool[i % len(pool)]
                i += clients
                t0 = time.perf_counter()
                try:
                    response = client.call("Predict", request)
                    ok, version = True, response.model_spec.version.value
                except ServingError as err:
                    ok, version = False, str(err)
                t1 = time.perf_counter()
                with lock:
                    if ok:
                        samples.append((t0 - started, t1 - t0))
                        if not versions or versions[-1] != version:
                            versions.append(version)
                        if version == new_version and "first_new" not in marks:
                            marks["first_new"] = t1 - started
                    else:
                        failures.append(version)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    load, next_sample = [], 0.0
    while any(t.is_alive() for t in threads):
        now = time.perf_counter() - started
        if now >= next_sample:
            load.append(os.getloadavg()[0])
            next_sample += 1.0
        if "pushed" not in marks and (now >= duration / 2 or sent[0] >= max_requests // 2):
            marks["pushed"] = now
            on_halfway()
        with lock:
            swapped = new_version in versions
        if (now >= duration and swapped) or now >= duration + swap_timeout:
            stop.set()
        time.sleep(0.01)
    wall = time.perf_counter() - started
    window = (marks.get("pushed", wall), marks.get("first_new", wall) + settle)
    result = latency_stats([latency for _, latency in samples], wall)
    result.update(
        rows_per_s=None,  # filled by the caller (qps x batch size)
        requests=len(samples) + len(failures),
        failed=len(failures),
        failures_sample=failures[:5],
        versions_seen=versions,
        swapped_under_load=new_version in versions,
        wall_s=round(wall, 2),
        during_swap={**latency_stats([lat for t, lat in samples if window[0] <= t <= window[1]]),
                     "window_s": [round(w, 2) for w in window]},
        outside_swap=latency_stats([lat for t, lat in samples if not window[0] <= t <= window[1]]),
        load_average_1min={"mean": round(statistics.fmean(load), 2), "max": round(max(load), 2)} if load else None,
    )
    return result


def wait_for_version(target: str, version: int, timeout: float) -> float:
    """Seconds until ``version`` serves (pushed -> loaded, warmed up, switched)."""
    from tfmoe.serving.client import ServingClient

    started = time.perf_counter()
    with ServingClient(target, timeout=5.0) as client:
        client.wait_until_available(MODEL_NAME, version=version, timeout=timeout)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-factory", help="module:function returning (keras model, ServingSpec)")
    source.add_argument("--export-fn", help="module:function(base_path, version) that exports a version")
    source.add_argument("--model-dir", help="an existing base path of exported versions")
    parser.add_argument("--quick", action="store_true", help="small demo model, short phases, temp output")
    parser.add_argument("--num-items", type=int, help="ids are drawn from 1..num_items (default: from the spec)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per phase (default: 4)")
    parser.add_argument("--duration", type=float, help="seconds per phase (default: 30, quick: 6)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="requests per phase at most")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per request in seconds")
    parser.add_argument("--server-flag", action="append", default=[],
                        help="extra server flag, e.g. --server-flag=--tensorflow_intra_op_parallelism=1")
    parser.add_argument("--xla", action="store_true", help="export with XLA (export_model(jit_compile=True))")
    parser.add_argument("--history-len", type=int, help="items per history (default: max_len; 0: random lengths)")
    parser.add_argument("--out", help=f"results JSON (default: {DEFAULT_OUT}; quick: a temp file)")
    args = parser.parse_args(argv)
    duration = args.duration or (6.0 if args.quick else 30.0)

    from tfmoe.serving import config, launcher
    from tfmoe.serving.client import ServingClient
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    workdir = tempfile.mkdtemp(prefix="serving-bench-")
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        versions = VersionSource(args, workdir)
        root = os.path.join(workdir, "models")
        base = os.path.join(root, MODEL_NAME)
        print(f"writing version 1 and the versions to push under {workdir}", flush=True)
        versions.write(base, 1)
        staged = {2: os.path.join(base, "1"), 3: os.path.join(base, "1")}  # pushes copy version 1
        files = config.write_server_configs(root, [config.ModelEntry(MODEL_NAME)],
                                            batching=config.BatchingConfig(max_batch_size=max(BATCH_SIZES)),
                                            monitoring=False)
        server = launcher.start_server(files.model_config_file, models=[MODEL_NAME],
                                       batching_parameters_file=files.batching_parameters_file,
                                       extra_flags=args.server_flag, timeout=600)
        print(f"{server.kind} server at {server.target}", flush=True)
        try:
            with ServingClient(server.target) as client:
                max_len = client.input_shape(MODEL_NAME, SIGNATURE, HISTORY)[1]
            results, swaps = {}, {}
            for phase, (batch_size, version) in enumerate(zip(BATCH_SIZES, (2, 3))):
                pool = build_requests(versions.num_items, max_len, batch_size, seed=phase, history_len=args.history_len)
                swap = {}

                def on_halfway(version=version, swap=swap):
                    push(staged[version], base, version)
                    threading.Thread(target=lambda: swap.update(
                        seconds=round(wait_for_version(server.target, version, 120), 2))).start()

                print(f"phase batch {batch_size}: {args.clients} clients, {duration:.0f} s, push version {version} "
                      "halfway", flush=True)
                result = run_phase(server.target, pool, args.clients, duration, args.max_requests, args.timeout,
                                   on_halfway, new_version=version)
                result["rows_per_s"] = round(result["qps"] * batch_size, 1)
                deadline = time.monotonic() + 120
                while "seconds" not in swap and time.monotonic() < deadline:
                    time.sleep(0.1)
                swaps[f"version_{version}_push_to_serving_s"] = swap.get("seconds")
                results[f"batch{batch_size}"] = result
                print(f"  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  {result['qps']} req/s  "
                      f"failed {result['failed']}  versions {result['versions_seen']}  p99 during the swap "
                      f"{result['during_swap']['p99_ms']} ms  load average {result['load_average_1min']}", flush=True)
        finally:
            server_kind = server.kind
            server.stop()
        payload = {
            **results,
            "failed_requests": sum(r["failed"] for r in results.values()),
            "requests": sum(r["requests"] for r in results.values()),
            "version_swaps": swaps,
            "config": {
                "server": server_kind, "signature": SIGNATURE, "max_len": max_len, "num_items": versions.num_items,
                "clients": args.clients, "phase_duration_s": duration, "max_requests_per_phase": args.max_requests,
                "request_timeout_s": args.timeout, "client_retries": 0, "server_flags": args.server_flag,
                "model": args.model_factory or args.export_fn or args.model_dir or
                ("quick demo (tfmoe.serving.demo_models)" if args.quick else f"SASRec {SASREC}, random weights"),
                "history_len": args.history_len or max_len, "xla": args.xla,
                "goal": "failed_requests == 0 and batch1.p99_ms < 20 (SASRec, 200-item history, 2 cores)",
            },
            "machine": machine_info(),
            "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()],
                             "cpus": os.cpu_count(),
                             "note": "1/5/15-min load averages of the whole machine (shared with other jobs)"},
        }
        out = args.out or (os.path.join(tempfile.gettempdir(), "serving-quick.json") if args.quick else DEFAULT_OUT)
        print(f"wrote {write_json(out, payload)}")
        swapped = all(r["swapped_under_load"] for r in results.values())
        return 0 if payload["failed_requests"] == 0 and swapped else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
