"""Serve what the Pusher pushed and ask it for recommendations over gRPC (the quickstart's last steps).

:func:`sample_users` picks users from a prepared ``test`` split (their whole sequence:
``items + [target]``); :func:`serve_and_recommend` starts a model server on a free 127.0.0.1 port
over the Pusher's base directory (the real ``tensorflow_model_server`` when installed, else
tfmoe's local server, :mod:`tfmoe.serving.launcher`), waits until the model is AVAILABLE, sends one
``top_k`` Predict request for all users through :class:`tfmoe.serving.client.ServingClient`, and stops
the server.

Example:
    >>> from tfmoe.tfx.demo import sample_users, serve_and_recommend
    >>> users = sample_users("runs/tfx/pipeline_root/tfmoe-sasrec/PrepareExamples/examples/1")  # doctest: +SKIP
    >>> result = serve_and_recommend("runs/tfx/serving", "recs", [u["history"] for u in users])  # doctest: +SKIP
    >>> result["item_ids"].shape  # doctest: +SKIP
    (3, 10)
"""

from __future__ import annotations

import glob
import os
import tempfile


def read_vocab(examples_dir: str, name: str = "items") -> list[str]:
    """Raw ids of a prepared vocabulary; index ``i`` is at position ``i`` (``[0]`` = padding)."""
    path = os.path.join(examples_dir, "vocab", f"{name}.txt")
    with open(path, encoding="utf-8") as f:
        return ["<pad>"] + [line.strip() for line in f if line.strip()]


def sample_users(examples_dir: str, count: int = 3) -> list[dict]:
    """``count`` users of the test split: ``{"user_id", "history"}`` (item indices, oldest first)."""
    import tensorflow as tf

    from tfmoe.data import schema

    files = sorted(glob.glob(os.path.join(examples_dir, "Split-test", "*"))) or sorted(
        glob.glob(os.path.join(examples_dir, "test", "*")))
    if not files:
        raise FileNotFoundError(f"no test split under {examples_dir!r}")
    users = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count):
        decoded = schema.decode_example(record.numpy())
        users.append({"user_id": decoded[schema.USER_ID],
                      "history": list(decoded[schema.ITEMS]) + [decoded[schema.TARGET]]})
    return users


def serve_and_recommend(serving_dir: str, model_name: str, histories, timeout: float = 180.0,
                        in_process: bool = False) -> dict:
    """Serves ``<serving_dir>/<model_name>`` and returns ``{"item_ids", "scores", "version", "target", "kind"}``.

    ``in_process=True`` runs tfmoe's local server inside this process (same gRPC services, no
    second TensorFlow start-up); otherwise a server process is started as in production.
    """
    from tfmoe.serving import config as server_config
    from tfmoe.serving.client import ServingClient

    base_path = os.path.join(os.path.abspath(serving_dir), model_name)

    def ask(target: str) -> dict:
        with ServingClient(target, timeout=30.0) as client:
            client.wait_until_available(model_name, timeout=timeout)
            top = client.top_k(model_name, histories=histories, exclude_seen=True)
        return {"item_ids": top.item_ids, "scores": top.scores, "version": top.version, "target": target}

    if in_process:
        from tfmoe.serving.model_server import LocalModelServer

        server = LocalModelServer([server_config.ModelEntry(model_name, base_path)], port=0).start()
        try:
            return {**ask(server.target), "kind": "local (in-process)"}
        finally:
            server.stop()

    from tfmoe.serving import launcher

    work = tempfile.mkdtemp(prefix="tfmoe-serve-")
    files = server_config.write_server_configs(work, [server_config.ModelEntry(model_name, base_path)],
                                               batching=None, monitoring=False)
    with launcher.start_server(files.model_config_file, models=[model_name], timeout=timeout, log_dir=work) as server:
        return {**ask(server.target), "kind": server.kind}
