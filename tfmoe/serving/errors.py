"""The one error type of the serving package: a gRPC status code plus a message that says what and where.

The local model server raises it and turns it into the RPC status; the client raises it for
every failed RPC, with the method, the server address and the number of attempts.

Example:
    >>> import grpc
    >>> from tfmoe.serving.errors import ServingError
    >>> err = ServingError(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(recs)")
    >>> str(err)
    'NOT_FOUND: Servable not found for request: Latest(recs)'
"""

from __future__ import annotations

import grpc

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a canonical code number (TensorFlow uses the same numbers); UNKNOWN otherwise."""
    return _BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


class ServingError(Exception):
    """A failed serving call: ``code`` (``grpc.StatusCode``), ``details`` and, from the client, where it failed."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str | None = None, target: str | None = None,
                 attempts: int = 1):
        self.code = code
        self.details = details
        self.method = method
        self.target = target
        self.attempts = attempts
        where = f" ({method} on {target}, {attempts} attempt{'s' if attempts != 1 else ''})" if method else ""
        super().__init__(f"{code.name}: {details}{where}")


def from_tf_error(err) -> ServingError:
    """A ``ServingError`` from a ``tf.errors.OpError`` raised while running a signature.

    Keeps the code and the message of the failing op; drops TensorFlow's "Graph execution error",
    node-location and stack-trace lines, which say nothing to a client.
    """
    kept = []
    for line in str(getattr(err, "message", err)).splitlines():
        stripped = line.strip()
        if (not stripped or stripped == "Graph execution error:" or stripped.startswith("Detected at node")
                or stripped.startswith("File ") or stripped == "<stack traces unavailable>"
                or stripped.startswith("[[{{node") or line.startswith("    ")):
            continue
        kept.append(stripped.split(" [Op:")[0])
    return ServingError(status_code(getattr(err, "error_code", 2)), " ".join(kept) or str(err))
