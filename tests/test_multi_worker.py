"""Multi-worker training: two worker processes on 127.0.0.1 (``TF_CONFIG``) train through ``tfmoe.training.train``
with strategy ``multi_worker`` and match single-worker training; only the chief writes its run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pytest
from test_dataset import write_prepared
from test_prepare import tree

from tfmoe.data import synthetic
from tfmoe.models import load_model
from tfmoe.training import train
from tfmoe.training.strategies import is_chief

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, "tests", "multi_worker_main.py")
MAX_LEN, GLOBAL_BATCH, WORKERS = 8, 16, 2
WORKER_TIMEOUT_S = 300  # both workers together; a worker that dies leaves the other blocked in a collective

# Tolerances. Everything is seeded and runs in a fixed order, so the differences are reproducible, not noise; they
# come from float32 summation order only: a multi-worker step all-reduces two half-batch gradients (each worker's
# mean over its 8 rows, halved), the single worker sums the 16 rows in one reduction. Same terms, other order: an
# ulp-sized difference per step, which the 8 SGD steps carry into the weights. Observed: 2.4e-7 absolute
# (weights up to ~1.2 in size, so ~2 ulp); the bound leaves a factor ~40 for other CPUs' kernels.
WEIGHTS_ATOL = 1e-5
LOSS_RTOL = 1e-5  # the logged mean loss; observed 1e-7 relative
# The ranking metrics are computed by each worker on its own (equal) weights over the whole split. Scores move by
# ~1e-7, far below the gaps between the scores of this data, so no item changes rank and the metrics agree to
# float rounding (observed: identical).
METRICS_ABS = 1e-6


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data = synthetic.generate(synthetic.preset_config("tiny", seed=0))
    sequences = {user: data.user_sequence(user).tolist() for user in range(1, data.config.num_users + 1)}
    # every training row fills all MAX_LEN positions (train records drop 2 items, inputs 1 more), so each
    # worker's mean loss over its half batch averages to the global mean (the model's loss is a masked mean)
    assert min(map(len, sequences.values())) - 3 >= MAX_LEN
    # one file per split, as `tfmoe prepare` writes below 128 MiB (the trainer shards by data, not by file)
    root = write_prepared(str(tmp_path_factory.mktemp("prepared")), sequences, shards=1,
                          num_items=data.config.num_items)
    return root, len(sequences)


def config(prepared, out, strategy, epochs=2):
    root, users = prepared
    return {
        "data": {"dir": root, "max_len": MAX_LEN, "batch_size": GLOBAL_BATCH, "eval_batch_size": 64,
                 # no shuffling: a strategy creates one more iterator of the dataset, so seeded epoch orders differ
                 "shuffle": False},
        "model": {"name": "sasrec", "hidden_dim": 16, "num_blocks": 1, "dropout": 0.0},
        # SGD with momentum: Adam's normalisation would blow float summation-order noise of tiny gradients up
        "optimizer": {"name": "sgd", "learning_rate": 0.5, "beta_1": 0.9},
        "training": {"epochs": epochs, "steps_per_epoch": users // GLOBAL_BATCH, "seed": 0, "strategy": strategy,
                     "verbose": 0},
        "evaluation": {"splits": ["valid", "test"]},
        "output_dir": str(out),
    }


def run_workers(tmp_path, prepared) -> list[dict]:
    """Runs the two workers (worker 0 is the chief), each with its own output directory; returns their results
    (``weights`` added). Both processes are killed if they are still running when this returns or fails."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(WORKERS)]}
    processes = []
    try:
        for index in range(WORKERS):
            work = tmp_path / f"worker{index}"
            work.mkdir()
            (work / "config.json").write_text(json.dumps(config(prepared, work / "out", "multi_worker")))
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": "",
                   "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            with open(work / "log.txt", "wb") as log:  # the child keeps its own handle
                processes.append(subprocess.Popen(
                    [sys.executable, HELPER, str(work / "config.json"), str(work / "result")],
                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        for index, process in enumerate(processes):
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = f"nothing after {WORKER_TIMEOUT_S} s"
            if code != 0:
                logs = "\n".join(f"--- worker {i} ---\n" + (tmp_path / f"worker{i}" / "log.txt").read_text()[-4000:]
                                 for i in range(WORKERS))
                pytest.fail(f"worker {index} exited with {code}\n{logs}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    results = []
    for index in range(WORKERS):
        folder = tmp_path / f"worker{index}" / "result"
        result = json.loads((folder / "result.json").read_text())
        with np.load(folder / "weights.npz") as weights:
            result["weights"] = dict(weights)
        results.append(result)
    return results


def first_batch_users(prepared) -> list[int]:
    """``user_id`` of the rows of the first single-worker training batch."""
    from tfmoe.data import dataset

    features, _ = next(iter(dataset.make_dataset(prepared[0], "train", max_len=MAX_LEN, batch_size=GLOBAL_BATCH,
                                                 shuffle=False)))
    return [int(u) for u in features["user_id"].numpy()]


@pytest.mark.slow
def test_two_workers_match_one_worker_and_only_the_chief_writes(tmp_path, prepared):
    import tensorflow as tf

    single = train(config(prepared, tmp_path / "single", "default"), strategy=tf.distribute.get_strategy())
    chief, other = run_workers(tmp_path, prepared)

    assert (chief["chief"], other["chief"], chief["workers"]) == (True, False, WORKERS)
    # each worker gets its half of the global batch: together, the single worker's first batch
    first, half = first_batch_users(prepared), GLOBAL_BATCH // WORKERS
    assert (chief["first_batch_users"], other["first_batch_users"]) == (first[:half], first[half:])

    expected = {w.path: w.numpy() for w in single.model.weights}
    for result in (chief, other):
        assert result["weights"].keys() == expected.keys()
        for path, value in expected.items():
            np.testing.assert_allclose(result["weights"][path], value, rtol=0, atol=WEIGHTS_ATOL, err_msg=path)
        assert (result["best_epoch"], result["epochs_run"]) == (single.best_epoch, 2)
        assert result["losses"] == pytest.approx([h["loss"] for h in single.history], rel=LOSS_RTOL)
        assert result["metrics"].keys() == single.metrics.keys() == {"valid", "test"}
        for split, metrics in single.metrics.items():
            assert result["metrics"][split] == pytest.approx(metrics, abs=METRICS_ABS), split

    # the chief wrote a complete run directory, whose saved model is the trained one
    chief_out = tmp_path / "worker0" / "out"
    assert sorted(os.listdir(chief_out)) == sorted(os.listdir(tmp_path / "single"))
    for weight in load_model(str(chief_out / "model.keras")).weights:
        np.testing.assert_allclose(weight.numpy(), expected[weight.path], rtol=0, atol=WEIGHTS_ATOL)
    assert not [path for path in chief["temporary_dirs"] if os.path.basename(path).startswith("tfmoe-worker-")]
    # the other worker wrote nothing in its output directory (not even created it); its saves went to one private
    # temporary directory, removed when train() returned
    assert not (tmp_path / "worker1" / "out").exists()
    made = other["temporary_dirs"]  # by any library: Keras' model.save makes one too
    assert len([path for path in made if os.path.basename(path).startswith("tfmoe-worker-")]) == 1
    assert not [path for path in made if os.path.exists(path)]


class NonChief:
    """A strategy that acts as the default one but is not the chief (as a non-chief worker's strategy)."""

    extended = SimpleNamespace(should_checkpoint=False)

    def __init__(self, strategy):
        self._strategy = strategy

    def __getattr__(self, name):
        return getattr(self._strategy, name)


def test_a_non_chief_worker_resumes_from_the_chief_run_and_writes_nothing_there(tmp_path, prepared, monkeypatch):
    import tensorflow as tf

    assert is_chief(tf.distribute.get_strategy()) and not is_chief(NonChief(tf.distribute.get_strategy()))
    # the chief's run directory after epoch 1 of 2 (a run cut off there has the same files)
    run_dir = tmp_path / "run"
    train(config(prepared, run_dir, "default", epochs=1))
    before = tree(run_dir)
    assert {"backup/latest.weights.h5", "best.weights.h5", "state.json"} <= before.keys()

    made, mkdtemp = [], tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *args, **kwargs: made.append(mkdtemp(*args, **kwargs)) or made[-1])
    resumed = train(config(prepared, run_dir, "default", epochs=2), strategy=NonChief(tf.distribute.get_strategy()))
    monkeypatch.undo()
    # it changed nothing in the run directory, and its private copy is gone ...
    assert tree(run_dir) == before
    assert len([path for path in made if os.path.basename(path).startswith("tfmoe-worker-")]) == 1
    assert not [path for path in made if os.path.exists(path)]
    # ... yet resumed from the chief's backup and state (epoch 0 is the chief's) and trained epoch 1 as the chief does
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert resumed.history[0] == json.loads(before["state.json"])["history"][0]
    chief = train(config(prepared, run_dir, "default", epochs=2))
    for a, b in zip(resumed.model.weights, chief.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert resumed.metrics == chief.metrics and resumed.best_epoch == chief.best_epoch
