"""Command line of the local model server, with ``tensorflow_model_server`` 's flag names.

The same flags start either server, so a test or a deployment script can swap the real binary
for ``python -m tfmoe.serving.model_server`` (or ``tfmoe serve``) without changing its arguments:

    --port=8500  --model_config_file=models.config  --model_config_file_poll_wait_seconds=60
    --model_name=recs --model_base_path=/models/recs   (single model, when no config file)
    --file_system_poll_wait_seconds=1  --enable_batching  --batching_parameters_file=batching.config
    --enable_model_warmup=true  --grpc_channel_arguments=grpc.max_receive_message_length=4194304
    --grpc_max_threads=16  --allow_version_labels_for_unavailable_models=true
    --tensorflow_intra_op_parallelism=2  --tensorflow_inter_op_parallelism=2

Local-only flags: ``--host`` (default 127.0.0.1) and ``--max_batch_size`` (overrides the
batching config's). One default differs: ``--tensorflow_intra_op_parallelism`` is 1 (the real
server's 0 means automatic): with concurrent requests on few cores, splitting each small op over
threads cost batch-1 latency in our measurements. Accepted and ignored, with a log line:
``--rest_api_port`` (no REST API here) and ``--monitoring_config_file``. Accepted silently:
``--max_num_load_retries`` and ``--load_retry_interval_micros`` (incomplete versions are
skipped, not retried). ``--file_system_poll_wait_seconds`` may be fractional here.

This module only defines flags; the server (and TensorFlow) load when :func:`run` is called.

Example:
    $ python -m tfmoe.serving.model_server --port=8500 --model_config_file=/srv/models/models.config
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger("tfmoe.serving.model_server")


def parse_bool(text) -> bool:
    """TF-flag booleans: true/false/1/0 (a bare ``--flag`` means true)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_channel_arguments(text: str) -> list:
    """``"k=v,k2=v2"`` -> ``[(k, v), ...]`` with integer values as ints (as the real server parses them)."""
    options = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            options.append((key, int(value)))
        except ValueError:
            options.append((key, value))
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the server flags to ``parser``."""
    flag = parser.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (default: %(default)s; 0 picks a free port)")
    flag("--host", default="127.0.0.1", help="address to listen on (local server only; default: %(default)s)")
    flag("--rest_api_port", type=int, default=0, help="accepted for compatibility; the local server has no REST API")
    flag("--model_config_file", default="", help="a ModelServerConfig text proto (models.config)")
    flag("--model_config_file_poll_wait_seconds", type=float, default=0,
         help="re-read --model_config_file this often (0: read once; default: %(default)s)")
    flag("--model_name", default="default", help="single-model mode: the model name (default: %(default)s)")
    flag("--model_base_path", default="", help="single-model mode: the directory of integer versions")
    flag("--file_system_poll_wait_seconds", type=float, default=1.0,
         help="poll base paths for new versions this often (0: once; default: %(default)s)")
    flag("--enable_batching", type=parse_bool, nargs="?", const=True, default=False,
         help="apply --batching_parameters_file (here: its max_batch_size limits each request)")
    flag("--batching_parameters_file", default="", help="a BatchingParameters text proto (batching.config)")
    flag("--max_batch_size", type=int, default=None, help="reject requests with more rows (local server only)")
    flag("--enable_model_warmup", type=parse_bool, nargs="?", const=True, default=True,
         help="replay assets.extra/tf_serving_warmup_requests before serving a version (default: true)")
    flag("--grpc_channel_arguments", default="", help="comma-separated gRPC server arguments, key=value")
    flag("--grpc_max_threads", type=int, default=0, help="request handler threads (0: 4 per CPU, at least 8)")
    flag("--allow_version_labels_for_unavailable_models", type=parse_bool, nargs="?", const=True, default=False,
         help="accepted for compatibility; the local server resolves labels at request time")
    flag("--monitoring_config_file", default="", help="accepted for compatibility; ignored by the local server")
    flag("--max_num_load_retries", type=int, default=5,
         help="accepted for compatibility; the local server skips incomplete versions and retries a failed "
              "version once its saved_model.pb changes")
    flag("--load_retry_interval_micros", type=int, default=60_000_000, help="accepted for compatibility")
    flag("--tensorflow_intra_op_parallelism", type=int, default=1,
         help="threads per op (default here: 1, since concurrent requests already keep the cores busy and "
              "splitting small ops costs batch-1 latency; 0: TensorFlow's automatic setting, the real server's "
              "default)")
    flag("--tensorflow_inter_op_parallelism", type=int, default=0, help="ops run in parallel (0: TF's default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmoe.serving.model_server",
                                     description="Local stand-in for tensorflow_model_server (gRPC only).")
    add_arguments(parser)
    return parser


def _models(args) -> list:
    from tfmoe.serving.config import ModelEntry, read_model_config

    if args.model_config_file:
        return read_model_config(args.model_config_file)
    if not args.model_base_path:
        raise ValueError("give --model_config_file, or --model_base_path (and --model_name)")
    return [ModelEntry(args.model_name, base_path=args.model_base_path)]


def _max_batch_size(args) -> int | None:
    if args.max_batch_size is not None:
        return args.max_batch_size
    if args.enable_batching and args.batching_parameters_file:
        from tfmoe.serving.config import parse_batching_config

        with open(args.batching_parameters_file, encoding="utf-8") as f:
            return parse_batching_config(f.read()).max_batch_size
    return None


def run(args) -> int:
    """Starts the local model server with parsed ``args`` and serves until SIGTERM / SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    from tfmoe.serving.model_server import LocalModelServer

    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    if args.rest_api_port:
        log.warning("--rest_api_port=%d ignored: the local model server serves gRPC only", args.rest_api_port)
    if args.monitoring_config_file:
        log.warning("--monitoring_config_file ignored by the local model server")
    try:
        models = _models(args)
        max_batch_size = _max_batch_size(args)
        channel_options = parse_channel_arguments(args.grpc_channel_arguments)
    except (ValueError, OSError, argparse.ArgumentTypeError) as err:
        log.error("%s", err)
        return 2
    server = LocalModelServer(
        models, host=args.host, port=args.port, poll_seconds=args.file_system_poll_wait_seconds,
        max_workers=args.grpc_max_threads or None, channel_options=channel_options, max_batch_size=max_batch_size,
        enable_warmup=args.enable_model_warmup, model_config_file=args.model_config_file or None,
        config_poll_seconds=args.model_config_file_poll_wait_seconds)
    try:
        server.start()
    except OSError as err:
        log.error("%s", err)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: _stop_in_background(server))
    server.wait()
    return 0


def _stop_in_background(server) -> None:
    """Stops ``server`` from a signal handler without blocking it (the shutdown runs in a thread)."""
    threading.Thread(target=server.stop, name="model-server-shutdown").start()


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))
