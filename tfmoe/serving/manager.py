"""Which versions of which models the local model server holds: polling, loading, warmup, unloading, lookup.

Each model of ``models.config`` has a base path with integer version directories
(:mod:`tfmoe.serving.layout`). Every ``poll_seconds`` the manager lists the *complete* versions
(``saved_model.pb`` present; an incomplete directory is skipped until it completes) and applies
the model's version policy: ``latest`` N (default 1), ``all``, or ``specific`` versions. Like TF
Serving's availability-preserving policy, a new version is loaded and warmed up (its
``tf_serving_warmup_requests`` replayed) *before* the versions it replaces are unloaded; an
unloaded version first leaves the routing table (no new request gets it), then waits for its
in-flight requests to finish. A version that fails to load is marked ``END`` with its error and
not retried until its ``saved_model.pb`` changes; the versions already serving keep serving.

Lookups mirror TF Serving: no version means the highest available one; an unknown model or
version is ``NOT_FOUND`` "Servable not found for request: Latest(name)" / "Specific(name, v)";
an unknown version label is ``INVALID_ARGUMENT`` "Unrecognized servable version label: x".
Labels resolve at request time (as with ``--allow_version_labels_for_unavailable_models``).

Example:
    >>> from tfmoe.serving.config import ModelEntry
    >>> from tfmoe.serving.manager import ModelManager
    >>> manager = ModelManager([ModelEntry("recs", "/tmp/models/recs")], poll_seconds=1.0)  # doctest: +SKIP
    >>> manager.start()  # doctest: +SKIP
    >>> with manager.servable("recs") as servable:  # doctest: +SKIP
    ...     servable.version
    1
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass

import grpc

from tfmoe.serving import layout
from tfmoe.serving.config import ModelEntry
from tfmoe.serving.errors import ServingError

log = logging.getLogger("tfmoe.serving.model_server")

# ModelVersionStatus.State numbers (tensorflow_serving/apis/get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


@dataclass
class VersionState:
    """The state of one version, as GetModelStatus reports it."""

    state: int
    error_code: int = 0  # a canonical (gRPC / TensorFlow) error code; 0 = OK
    error_message: str = ""
    saved_model_mtime: float = 0.0


class ModelManager:
    """Loads, serves and unloads model versions (see the module docstring)."""

    def __init__(self, models, poll_seconds: float = 1.0, enable_warmup: bool = True,
                 max_batch_size: int | None = None, unload_timeout: float = 60.0):
        self._lock = threading.Lock()  # guards _models, _routing, _states
        self._poll_lock = threading.Lock()  # one poll (load/unload round) at a time
        self._models: dict[str, ModelEntry] = {}
        self._routing: dict[str, dict] = {}  # model -> {version: Servable}, AVAILABLE versions only
        self._states: dict[str, dict] = {}  # model -> {version: VersionState}
        self.poll_seconds = float(poll_seconds)
        self.enable_warmup = enable_warmup
        self.max_batch_size = max_batch_size
        self.unload_timeout = unload_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.set_models(models)

    # ---- configuration ----
    def set_models(self, models) -> None:
        """Replaces the served model list (new models load at the next poll, removed ones unload)."""
        models = list(models)
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"ModelManager: model names must be unique, got {names}")
        with self._lock:
            self._models = {m.name: m for m in models}
            for name in self._models:
                self._routing.setdefault(name, {})
                self._states.setdefault(name, {})

    def reload(self, models) -> None:
        """Applies a new model list and runs one poll synchronously (HandleReloadConfigRequest)."""
        self.set_models(models)
        self.poll()

    # ---- polling ----
    def start(self) -> None:
        """Loads the initial versions, then polls in a background thread every ``poll_seconds``."""
        self.poll()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="model-manager-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every version (after its in-flight requests finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._poll_lock:
            for name in list(self._routing):
                for version in list(self._routing[name]):
                    self._unload(name, version)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # a broken base path must not stop the polling of the others
                log.exception("model poll failed")

    def aspired_versions(self, model: ModelEntry) -> list[int]:
        """The complete versions on disk that ``model``'s version policy wants served."""
        complete = layout.complete_versions(model.base_path)
        if model.version_policy == "latest":
            return complete[-model.num_versions:]
        if model.version_policy == "all":
            return complete
        return [v for v in complete if v in set(model.versions)]

    def poll(self) -> None:
        """One round: load newly aspired versions, then unload versions no longer aspired."""
        with self._poll_lock:
            with self._lock:
                models = dict(self._models)
                removed = [name for name in self._routing if name not in models]
            for name, model in models.items():
                aspired = self.aspired_versions(model)
                for version in aspired:
                    if self._needs_load(name, model, version):
                        self._load(name, model, version)
                with self._lock:
                    available = set(self._routing[name])
                # Availability preserving: unload only once an aspired version serves.
                if available & set(aspired):
                    for version in sorted(available - set(aspired)):
                        self._unload(name, version)
            for name in removed:
                for version in list(self._routing.get(name, {})):
                    self._unload(name, version)
                with self._lock:
                    self._routing.pop(name, None)

    def _needs_load(self, name: str, model: ModelEntry, version: int) -> bool:
        with self._lock:
            if version in self._routing[name]:
                return False
            state = self._states[name].get(version)
        if state is None:
            return True
        if state.state != END:
            return False
        if state.error_code:  # a failed version is retried only once its saved_model.pb changes
            return _mtime(layout.version_path(model.base_path, version)) != state.saved_model_mtime
        return True  # unloaded earlier and aspired again (e.g. the newer version was deleted)

    def _set_state(self, name: str, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[name][version] = state

    def _load(self, name: str, model: ModelEntry, version: int) -> None:
        from tfmoe.serving.servable import Servable

        path = layout.version_path(model.base_path, version)
        mtime = _mtime(path)
        self._set_state(name, version, VersionState(LOADING, saved_model_mtime=mtime))
        started = time.perf_counter()
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = Servable(name, version, path)
            warmed = servable.warm_up(self.max_batch_size) if self.enable_warmup else 0
        except ServingError as err:
            self._fail(name, version, mtime, err.code.value[0], f"warmup failed: {err.details}")
            return
        except Exception as err:  # any load failure is reported through GetModelStatus
            self._fail(name, version, mtime, grpc.StatusCode.UNKNOWN.value[0], f"{type(err).__name__}: {err}")
            return
        with self._lock:
            self._routing[name][version] = servable
            self._states[name][version] = VersionState(AVAILABLE, saved_model_mtime=mtime)
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2f s (%d warmup requests)",
                 name, version, time.perf_counter() - started, warmed)

    def _fail(self, name: str, version: int, mtime: float, code: int, message: str) -> None:
        log.error("Loading servable version {name: %s version: %d} failed: %s", name, version, message)
        self._set_state(name, version, VersionState(END, code, message, mtime))

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            servable = self._routing.get(name, {}).pop(version, None)
            if servable is None:
                return
            self._states[name][version] = VersionState(UNLOADING)
        log.info("Unloading servable version {name: %s version: %d}", name, version)
        if not servable.drain(self.unload_timeout):
            log.warning("Unloading {name: %s version: %d}: in-flight requests did not finish within %.0f s",
                        name, version, self.unload_timeout)
        self._set_state(name, version, VersionState(END))
        log.info("Done unloading servable version {name: %s version: %d}", name, version)

    # ---- lookups ----
    def resolve_version(self, name: str, version: int | None = None, label: str | None = None) -> int | None:
        """The version a request means: ``version``, ``label``'s version, or ``None`` (= latest)."""
        if label:
            with self._lock:
                model = self._models.get(name)
            if model is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
            if label not in model.version_labels:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label} (model {name!r} has labels "
                                   f"{sorted(model.version_labels)})")
            return model.version_labels[label]
        return version

    @contextlib.contextmanager
    def servable(self, name: str, version: int | None = None, label: str | None = None):
        """The servable for a request, held (not unloaded) until the ``with`` block ends."""
        version = self.resolve_version(name, version, label)
        with self._lock:
            loaded = self._routing.get(name, {})
            chosen = loaded.get(version) if version is not None else (loaded[max(loaded)] if loaded else None)
            if chosen is None:
                request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
            chosen.acquire()
        try:
            yield chosen
        finally:
            chosen.release()

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list:
        """``[(version, VersionState)]`` as GetModelStatus reports it (``NOT_FOUND`` like TF Serving)."""
        version = self.resolve_version(name, version, label)
        with self._lock:
            states = dict(self._states.get(name, {}))
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        return sorted(states.items())

    def available(self) -> dict:
        """``{model: [available versions]}``."""
        with self._lock:
            return {name: sorted(versions) for name, versions in self._routing.items()}


def _mtime(version_dir: str) -> float:
    try:
        return os.stat(os.path.join(version_dir, layout.SAVED_MODEL_PB)).st_mtime
    except OSError:
        return 0.0
