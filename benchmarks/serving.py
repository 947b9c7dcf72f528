"""Serving load test: latency and throughput over gRPC on loopback while a new model version is pushed.

Exports version 1 of a next-item or CTR model (or takes an existing export), starts a model server on a
free loopback port (the real ``tensorflow_model_server`` if it is on PATH, else the local model
server, with the same flags), then runs one bounded phase per request batch size of concurrent
clients, each sending requests of the online path back to back (the default variant: batch 1, one user per
request, then batch 64): ``top_k`` requests with raw ``[batch, max_len]`` histories for a next-item model,
``predict_raw`` requests with histories and a candidate ``target_item`` per row for a CTR model.

Halfway through each phase a new version is pushed the way the TFX Pusher does it (copied into
a staging directory, then renamed into place); the server loads and warms it up, switches to it
and unloads the old one while the clients keep going. Clients do not retry, so every request the
swap breaks is counted in ``failed_requests`` (the goal is zero). Each phase stops after
``phase_duration_s`` seconds or ``max_requests_per_phase`` requests, whichever comes first.

Settings: ``benchmarks/settings/serving.yaml``. The model comes from the variant's ``model`` (the default
variant: SASRec as for ML-1M, ``num_items`` 3416, ``max_len`` 200, hidden 64, 2 blocks, random weights, exported
with XLA and without a hand-written spec, :func:`tfmoe.serving.model_specs.spec_for_model`; every request carries
full 200-item histories; ``quick``: a small demo model of :mod:`tfmoe.serving.demo_models` and short phases), or
from the command line:

* ``--model-factory module:function``: ``function()`` returns ``(keras_model, ServingSpec)``;
  versions are exported with :func:`tfmoe.serving.export.export_model`;
* ``--export-fn module:function``: ``function(base_path, version)`` writes that version itself;
* ``--model-dir DIR``: an existing base path; its latest version is served and re-pushed as new
  version numbers (the record's data hash is that version's files).

The variants ``ctr_din_l1000`` and ``ctr_mos_din_l1000`` serve the long-CTR benchmark's DIN and MoS-DIN at history
length 1,000 (``registry`` factory, random weights), every request with full 1,000-item histories: run them one
after the other on quiet cores to set MoS-DIN's latency next to DIN's.

Version 1 is exported once; the pushed versions are copies of it under new version numbers (the
server loads, warms up, switches and unloads exactly as for new weights, without paying for more
exports during the run). The load average of the machine is sampled every second of each phase
(the cores may be shared). One record per run (:mod:`benchmarks.records`),
``benchmarks/results/records/serving/<label>/seed<k>-<hash>.json``, written after every phase (all but the last
``partial``); its metrics: ``{"batch1": {"p50_ms", "p99_ms", "qps", ..., "during_swap": {...}}, "batch64": {...},
"failed_requests": n, "requests": total, "version_swaps": {...}, "load_average": {...}}``. The quick variant's
record goes to a temporary folder unless ``--out-records`` is given (a toy model's numbers are not results). Goal
for SASRec with a 200-item history on 2 cores: zero failed requests and ``batch1.p99_ms`` under 20.

Usage:
    .venv/bin/python benchmarks/serving.py                 # SASRec, 2 phases of 30 s
    .venv/bin/python benchmarks/serving.py --quick         # smoke run on a toy model
    .venv/bin/python benchmarks/serving.py --variant ctr_din_l1000 && \\
        .venv/bin/python benchmarks/serving.py --variant ctr_mos_din_l1000
    .venv/bin/python benchmarks/serving.py --model-factory mypackage.models:serving_model
"""

from __future__ import annotations

import argparse
import copy
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
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _paths as paths
from benchmarks import records

BENCHMARK = "serving"
SETTINGS_FILE = os.path.join(paths.BENCHMARKS, "settings", "serving.yaml")
with open(SETTINGS_FILE, encoding="utf-8") as _f:
    SETTINGS = yaml.safe_load(_f)
MODEL_NAME = "recs"
# the signature each task's online requests call: raw [batch, max_len] histories (and a CTR model's candidates)
SIGNATURES = {"next_item": "top_k", "ctr": "predict_raw"}
HISTORY = "history"
TARGET_ITEM = "target_item"
LOAD_AVERAGE_NOTE = "1/5/15-min load averages of the whole machine (shared with other jobs)"


def variant_config(name: str) -> dict:
    """The complete config of variant ``name`` of the settings file (a copy)."""
    if name not in SETTINGS["variants"]:
        raise ValueError(f"serving: no variant {name!r} in {SETTINGS_FILE} (have {sorted(SETTINGS['variants'])})")
    return copy.deepcopy(SETTINGS["variants"][name])


def load_callable(dotted: str):
    """``"package.module:function"`` -> the function."""
    module, sep, name = dotted.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected module:function, got {dotted!r}")
    return getattr(importlib.import_module(module), name)


def model_factory(model: dict):
    """A function returning ``(keras_model, ServingSpec)`` for the ``model`` entry of a config: ``sasrec`` (random
    weights, the spec derived from the model), ``demo`` (:mod:`tfmoe.serving.demo_models`) or ``module:function``."""
    factory, options = model["factory"], model.get("options", {})
    if factory == "sasrec":
        def sasrec():
            from tfmoe.models import SASRec
            from tfmoe.serving.model_specs import spec_for_model

            built = SASRec(**options, seed=model["seed"])
            return built, spec_for_model(built, top_k=model["top_k"])

        return sasrec
    if factory == "registry":
        def registered():
            import keras

            from tfmoe.models import presets, registry
            from tfmoe.serving.model_specs import spec_for_model

            arguments = dict(options)
            if ("name" in arguments) == ("preset" in arguments):
                raise ValueError(f"serving: model factory 'registry' needs options.name or options.preset, got "
                                 f"{sorted(options)}")
            keras.utils.set_random_seed(model["seed"])  # random weights: latency does not depend on them
            built = (presets.build(arguments.pop("preset"), **arguments) if "preset" in arguments
                     else registry.build_model(arguments.pop("name"), **arguments))
            return built, spec_for_model(built, top_k=model["top_k"])

        return registered
    if factory == "demo":
        def demo():
            from tfmoe.serving import demo_models

            return (demo_models.next_item_model(options["num_items"], options["max_len"], dim=options["dim"],
                                                seed=model["seed"]),
                    demo_models.next_item_spec(options["num_items"], options["max_len"], top_k=model["top_k"]))

        return demo
    return load_callable(factory)


class VersionSource:
    """Writes version ``v`` of the benchmarked model into a base path (export, export-fn or copy)."""

    def __init__(self, config: dict, workdir: str):
        self.workdir = workdir
        self.num_items = config.get("num_items")
        self.jit_compile = config["xla"]
        self.batch_sizes = tuple(config["batch_sizes"])
        self.files = []  # the files read as data: an existing export
        self.task = config.get("task") or "next_item"  # an export's task; a built model's comes from its spec
        model = config["model"]
        if model.get("model_dir"):
            from tfmoe.serving import layout

            versions = layout.complete_versions(model["model_dir"])
            if not versions:
                raise ValueError(f"--model-dir {model['model_dir']!r} has no complete version directory")
            self.source_dir = layout.version_path(model["model_dir"], versions[-1])
            self.files = [self.source_dir]
            self.write = self._copy
        elif model.get("export_fn"):
            self.export_fn = load_callable(model["export_fn"])
            self.write = self._export_fn
        else:
            self.model, self.spec = model_factory(model)()
            self.task = self.spec.task
            self.write = self._export
            history = self.spec.feature(self.spec.history_feature)
            self.num_items = self.num_items or (history.vocab_size - 1 if history.vocab_size else None)
        if not self.num_items:
            raise ValueError("give --num-items (ids are drawn from 1..num_items)")

    def _export(self, base_path: str, version: int) -> None:
        from tfmoe.serving.export import export_model

        export_model(self.model, base_path, self.spec, version=version, model_name=MODEL_NAME,
                     warmup_batch_sizes=self.batch_sizes, jit_compile=self.jit_compile)

    def _export_fn(self, base_path: str, version: int) -> None:
        self.export_fn(base_path, version)

    def _copy(self, base_path: str, version: int) -> None:
        from tfmoe.serving import layout

        layout.push_copy(self.source_dir, base_path, version)


def push(staged_dir: str, base_path: str, version: int) -> None:
    from tfmoe.serving import layout

    layout.push_copy(staged_dir, base_path, version)


def build_requests(num_items: int, max_len: int, batch_size: int, seed: int, history_len: int | None = None,
                   pool_size: int = 64, task: str = "next_item") -> list:
    """``pool_size`` pre-built requests of ``task``'s signature (:data:`SIGNATURES`) with random histories of ids
    1..num_items: ``top_k`` with ``exclude_seen`` for a next-item model, ``predict_raw`` with a random candidate
    ``target_item`` per row for a CTR model.

    Every history has ``history_len`` items (default ``max_len``: full histories), or, with
    ``history_len=0``, a random length in 1..max_len.

    Example:
        >>> pool = build_requests(100, 8, batch_size=2, seed=0, pool_size=3, task="ctr")
        >>> len(pool), pool[0].model_spec.signature_name, sorted(pool[0].inputs)
        (3, 'predict_raw', ['history', 'target_item'])
    """
    from tfmoe.serving import requests

    if task not in SIGNATURES:
        raise ValueError(f"serving: unknown task {task!r} (have {sorted(SIGNATURES)})")
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(pool_size):
        lengths = (rng.integers(1, max_len + 1, size=batch_size) if history_len == 0 else
                   np.full(batch_size, min(history_len or max_len, max_len)))
        histories = [rng.integers(1, num_items + 1, size=n) for n in lengths]
        inputs = {HISTORY: requests.pad_histories(histories, max_len)}
        if task == "ctr":
            inputs[TARGET_ITEM] = rng.integers(1, num_items + 1, size=batch_size).astype(np.int64)
        else:
            inputs["exclude_seen"] = np.ones(batch_size, bool)
        pool.append(requests.predict_request(MODEL_NAME, inputs, signature=SIGNATURES[task]))
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


def resolved_config(config: dict, *, server: str, max_len: int, num_items: int, task: str = "next_item") -> dict:
    """The config a run measured: the variant's (with the command line's changes), the server kind, the task and its
    signature, the served ``max_len``, the ids' range and the history length of the requests."""
    history_len = max_len if config["history_len"] is None else config["history_len"]
    return {**config, "server": server, "task": task, "signature": SIGNATURES[task], "max_len": max_len,
            "num_items": num_items,
            "history_len": history_len, "client_retries": 0}


def serving_metrics(results: dict, swaps: dict, load_before: list, load_after: list) -> dict:
    """The record's metrics from the phases measured so far (``{"batch<b>": phase result}``)."""
    return {**results, "failed_requests": sum(r["failed"] for r in results.values()),
            "requests": sum(r["requests"] for r in results.values()), "version_swaps": swaps,
            "load_average": {"before": load_before, "after": load_after, "cpus": os.cpu_count(),
                             "note": LOAD_AVERAGE_NOTE}}


def serving_record(label: str, config: dict, metrics: dict, *, partial: bool, data_files=(), command=None) -> dict:
    """The record of a run (:func:`benchmarks.records.make_record`)."""
    return records.make_record(BENCHMARK, label, config, metrics, epochs=None, seed=config["seed"], partial=partial,
                               data_files=list(data_files), command=command)


def apply_arguments(config: dict, args) -> dict:
    """``config`` with the command line's changes."""
    config = copy.deepcopy(config)
    if args.model_factory:
        config["model"] = {"factory": args.model_factory}
    elif args.export_fn:
        config["model"] = {"export_fn": args.export_fn}
    elif args.model_dir:
        config["model"] = {"model_dir": args.model_dir}
    for key, value in (("num_items", args.num_items), ("clients", args.clients),
                       ("phase_duration_s", args.duration), ("max_requests_per_phase", args.max_requests),
                       ("request_timeout_s", args.timeout), ("xla", args.xla), ("history_len", args.history_len),
                       ("task", args.task)):
        if value is not None:
            config[key] = value
    config["server_flags"] = [*config["server_flags"], *args.server_flag]
    return config


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="default", choices=sorted(SETTINGS["variants"]))
    parser.add_argument("--quick", action="store_const", const="quick", dest="variant",
                        help="the quick variant: a small demo model, short phases, a temporary records folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-factory", help="module:function returning (keras model, ServingSpec)")
    source.add_argument("--export-fn", help="module:function(base_path, version) that exports a version")
    source.add_argument("--model-dir", help="an existing base path of exported versions")
    parser.add_argument("--num-items", type=int, help="ids are drawn from 1..num_items (default: from the spec)")
    parser.add_argument("--clients", type=int, help="concurrent clients per phase (default: the variant's)")
    parser.add_argument("--duration", type=float, help="seconds per phase (default: the variant's)")
    parser.add_argument("--max-requests", type=int, help="requests per phase at most (default: the variant's)")
    parser.add_argument("--timeout", type=float, help="deadline per request in seconds (default: the variant's)")
    parser.add_argument("--server-flag", action="append", default=[],
                        help="extra server flag, e.g. --server-flag=--tensorflow_intra_op_parallelism=1")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                        help="export with XLA (export_model(jit_compile=True); default: the variant's)")
    parser.add_argument("--task", choices=sorted(SIGNATURES),
                        help="the task of an --export-fn or --model-dir model (default: next_item)")
    parser.add_argument("--history-len", type=int, help="items per history (default: max_len; 0: random lengths)")
    parser.add_argument("--label", help="the record's variant label (default: the variant's name; custom when the "
                                        "model comes from the command line)")
    parser.add_argument("--out-records", help="where the record is written (default: benchmarks/results/records; "
                                              "quick: a temporary folder)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    config = apply_arguments(variant_config(args.variant), args)
    label = args.label or ("custom" if args.model_factory or args.export_fn or args.model_dir else args.variant)
    out_records = args.out_records or (tempfile.mkdtemp(prefix="serving-records-") if args.variant == "quick"
                                       else records.ROOT)
    command = sys.argv if argv is None else ["benchmarks/serving.py", *argv]
    batch_sizes = config["batch_sizes"]

    from tfmoe.serving import config as server_config
    from tfmoe.serving import launcher
    from tfmoe.serving.client import ServingClient
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    workdir = tempfile.mkdtemp(prefix="serving-bench-")
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        versions = VersionSource(config, workdir)
        root = os.path.join(workdir, "models")
        base = os.path.join(root, MODEL_NAME)
        print(f"writing version 1 and the versions to push under {workdir}", flush=True)
        versions.write(base, 1)
        new_versions = list(range(2, 2 + len(batch_sizes)))
        staged = {version: os.path.join(base, "1") for version in new_versions}  # pushes copy version 1
        files = server_config.write_server_configs(
            root, [server_config.ModelEntry(MODEL_NAME)],
            batching=server_config.BatchingConfig(max_batch_size=max(batch_sizes)), monitoring=False)
        server = launcher.start_server(files.model_config_file, models=[MODEL_NAME],
                                       batching_parameters_file=files.batching_parameters_file,
                                       extra_flags=config["server_flags"], timeout=600)
        print(f"{server.kind} server at {server.target}", flush=True)
        record = None
        try:
            with ServingClient(server.target) as client:
                max_len = client.input_shape(MODEL_NAME, SIGNATURES[versions.task], HISTORY)[1]
            resolved = resolved_config(config, server=server.kind, max_len=max_len, num_items=versions.num_items,
                                       task=versions.task)
            results, swaps = {}, {}
            for phase, (batch_size, version) in enumerate(zip(batch_sizes, new_versions)):
                pool = build_requests(versions.num_items, max_len, batch_size, seed=config["seed"] + phase,
                                      history_len=config["history_len"], pool_size=config["request_pool"],
                                      task=versions.task)
                swap = {}

                def on_halfway(version=version, swap=swap):
                    push(staged[version], base, version)
                    threading.Thread(target=lambda: swap.update(
                        seconds=round(wait_for_version(server.target, version, config["swap_timeout_s"]), 2))).start()

                print(f"phase batch {batch_size}: {config['clients']} clients, {config['phase_duration_s']:.0f} s, "
                      f"push version {version} halfway", flush=True)
                result = run_phase(server.target, pool, config["clients"], config["phase_duration_s"],
                                   config["max_requests_per_phase"], config["request_timeout_s"], on_halfway,
                                   new_version=version, swap_timeout=config["swap_timeout_s"],
                                   settle=config["settle_s"])
                result["rows_per_s"] = round(result["qps"] * batch_size, 1)
                deadline = time.monotonic() + config["swap_timeout_s"]
                while "seconds" not in swap and time.monotonic() < deadline:
                    time.sleep(0.1)
                swaps[f"version_{version}_push_to_serving_s"] = swap.get("seconds")
                results[f"batch{batch_size}"] = result
                print(f"  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  {result['qps']} req/s  "
                      f"failed {result['failed']}  versions {result['versions_seen']}  p99 during the swap "
                      f"{result['during_swap']['p99_ms']} ms  load average {result['load_average_1min']}", flush=True)
                metrics = serving_metrics(results, swaps, load_before, [round(x, 2) for x in os.getloadavg()])
                record = serving_record(label, resolved, metrics, partial=len(results) < len(batch_sizes),
                                        data_files=versions.files, command=command)
                record["path"] = records.write_record(record, out_records)
        finally:
            server.stop()
        print(f"record: {record['path']}")
        swapped = all(r["swapped_under_load"] for r in results.values())
        return 0 if record["metrics"]["failed_requests"] == 0 and swapped else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
