"""Start a model server process on a free loopback port: the real binary when installed, else the local one.

:func:`start_server` runs ``tensorflow_model_server`` if ``shutil.which`` finds it, otherwise
``python -m tfmoe.serving.model_server`` (the local stand-in), with the *same* flags, then waits until
the given models are AVAILABLE. Tests and the benchmark use it, so they run unchanged against
the real server wherever it exists. The process log goes to a file (no pipe to fill up), and a
start-up failure raises with the log's tail.

Example:
    >>> from tfmoe.serving import launcher
    >>> with launcher.start_server("/srv/models/models.config", models=["recs"]) as server:  # doctest: +SKIP
    ...     server.target, server.kind
    ('127.0.0.1:40123', 'local')
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REAL_BINARY = "tensorflow_model_server"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_argv(flags, binary: str | None = None) -> tuple[list[str], str]:
    """``(argv, kind)``: the real binary if installed (kind ``"tensorflow_model_server"``), else the local server."""
    real = binary or shutil.which(REAL_BINARY)
    if real:
        return [real, *flags], REAL_BINARY
    return [sys.executable, "-m", "tfmoe.serving.model_server", *flags], "local"


@dataclass
class ServerProcess:
    """A running model server: ``target`` (``host:port``), ``kind``, the process and its log file."""

    process: subprocess.Popen
    target: str
    kind: str
    log_path: str
    argv: list = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def wait_until_available(self, models, timeout: float = 180.0) -> None:
        """Waits until every model in ``models`` has an AVAILABLE version; ``RuntimeError`` with the log tail if not."""
        from tfmoe.serving.client import ServingClient
        from tfmoe.serving.errors import ServingError

        give_up = time.monotonic() + timeout
        with ServingClient(self.target, timeout=2.0, retries=0) as client:
            for model in models:
                while True:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"{self.kind} exited with code {self.process.returncode} during start-up; "
                                           f"log {self.log_path}:\n{self.log_tail()}")
                    try:
                        client.wait_until_available(model, timeout=min(2.0, max(0.1, give_up - time.monotonic())))
                        break
                    except ServingError as err:
                        if time.monotonic() >= give_up:
                            raise RuntimeError(f"{self.kind}: model {model!r} not available after {timeout:.0f} s "
                                               f"({err}); log {self.log_path}:\n{self.log_tail()}") from None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn_server(model_config_file: str, batching_parameters_file: str | None = None, poll_seconds: int = 1,
                 extra_flags=(), binary: str | None = None, log_dir: str | None = None) -> ServerProcess:
    """Starts a server for ``model_config_file`` on a free port without waiting (see :func:`start_server`).

    Useful to overlap the server's start-up (importing TensorFlow takes seconds) with exporting
    the models it will load: the server picks them up at its next poll.
    """
    port = free_port()
    flags = [f"--port={port}", f"--model_config_file={model_config_file}",
             f"--file_system_poll_wait_seconds={int(poll_seconds)}",
             "--allow_version_labels_for_unavailable_models=true"]
    if batching_parameters_file:
        flags += ["--enable_batching=true", f"--batching_parameters_file={batching_parameters_file}"]
    argv, kind = server_argv([*flags, *extra_flags], binary)
    log_path = os.path.join(log_dir or tempfile.mkdtemp(prefix="model-server-"), "server.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return ServerProcess(process, f"127.0.0.1:{port}", kind, log_path, argv)


def start_server(model_config_file: str, models=(), batching_parameters_file: str | None = None,
                 poll_seconds: int = 1, extra_flags=(), binary: str | None = None, timeout: float = 180.0,
                 log_dir: str | None = None) -> ServerProcess:
    """Starts a server for ``model_config_file`` on a free port and waits until ``models`` are AVAILABLE.

    ``poll_seconds`` is ``--file_system_poll_wait_seconds`` (an integer, as the real flag is).
    Raises ``RuntimeError`` with the log tail if the process exits or the models do not load.
    """
    server = spawn_server(model_config_file, batching_parameters_file, poll_seconds, extra_flags, binary, log_dir)
    try:
        server.wait_until_available(models, timeout)
    except BaseException:
        server.stop()
        raise
    return server
