"""The models and their versions: loading, warmup, hot swap, retirement, labels, status.

Each model of the ModelServerConfig has a local ``base_path`` that is polled every ``poll_seconds``. On each
pass the version policy picks the aspired versions; those not loaded yet are loaded newest first: START ->
LOADING -> (SavedModel load, warmup records replayed) -> AVAILABLE. Only after that pass has loaded what it
could are versions the policy no longer wants retired (UNLOADING -> END): a retired version leaves the routing
table at once, and its TensorFlow objects are released once the requests holding it (queued or running) have
finished. A version that fails to load ends in END with the error in its status and never replaces a working
version: it does not count for the policy, and within the same pass the next newest version is tried instead,
until the policy's N versions are loaded or no candidate is left (with ``latest { num_versions: 2 }`` and
versions 3, 4 good and 9, 10 broken, 3 and 4 serve from the first pass, start-up included). An old version is
retired only when one of the aspired versions is AVAILABLE (or when the policy aspires nothing on disk at all,
i.e. the directories are gone). A failed version is retried when its files change.

Requests name a model, and optionally a version or a label; without either they get the highest AVAILABLE
version. Labels follow TF Serving: a label may only be assigned to an AVAILABLE version, which at start-up
means never, unless ``allow_version_labels_for_unavailable_models`` (then a new or unchanged label may point
anywhere, and requests through it fail with NOT_FOUND until the version is loaded).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import config as cfg
from .errors import Code, ServingError, failed_precondition, from_exception, invalid_argument, not_found
from .metrics import ServingMetrics
from .servable import LoadError, Servable
from .versions import ScanError, State, VersionPolicy, VersionStatus, fingerprint, scan_versions

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """A loaded version in the routing table; ``inflight`` counts the requests holding it."""

    servable: Servable
    inflight: int = 0
    retiring: bool = False


@dataclass
class _Model:
    name: str
    model_config: object
    base_path: Path
    policy: VersionPolicy
    configured: bool = True
    states: dict[int, VersionStatus] = field(default_factory=dict)
    live: dict[int, _Live] = field(default_factory=dict)
    failed: dict[int, tuple] = field(default_factory=dict)  # version -> fingerprint at the failed attempt
    labels: dict[str, int] = field(default_factory=dict)
    last_scan_error: str | None = None


class Handle:
    """A claim on one loaded version; release it (or use ``with``) when the request is done."""

    def __init__(self, manager: ModelManager, live: _Live):
        self._manager = manager
        self._live = live
        self.servable = live.servable
        self._released = False

    @property
    def name(self) -> str:
        return self.servable.name

    @property
    def version(self) -> int:
        return self.servable.version

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._live)

    def hold_until(self, future) -> None:
        """Keep the version loaded until ``future`` (work already queued for it) is done, even once this
        handle is released: a request cancelled by its client must not leave a batch running on a version
        that is being unloaded."""
        self._manager._hold(self._live)
        future.add_done_callback(lambda _: self._manager._release(self._live))

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


Warmup = Callable[[Servable], None]
Loader = Callable[[str, int, Path], Servable]


class ModelManager:
    def __init__(self, model_server_config, *, poll_seconds: float = 1.0, warmup: Warmup | None = None,
                 allow_version_labels_for_unavailable_models: bool = False, metrics: ServingMetrics | None = None,
                 loader: Loader = Servable.load, config_reloader: Callable[[], object | None] | None = None,
                 config_poll_seconds: float = 0.0):
        cfg.check_model_server_config(model_server_config, "model config")
        self._initial_config = model_server_config
        self.poll_seconds = poll_seconds
        self.warmup = warmup
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self.metrics = metrics or ServingMetrics()
        self._loader = loader
        self._config_reloader = config_reloader
        self._config_poll_seconds = config_poll_seconds
        self._lock = threading.Condition(threading.RLock())
        self._sync_lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._labels_ready = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retirements: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply the initial config (loading every aspired version, blocking), then poll in the background."""
        self.reload_config(self._initial_config, initial=True)
        if self.poll_seconds > 0:
            self._spawn(self._poll_loop, "model-poller")
        if self._config_reloader is not None and self._config_poll_seconds > 0:
            self._spawn(self._config_loop, "config-poller")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and wait for the pollers and retirements, ``timeout`` seconds in all (a load in progress
        is not interrupted: its daemon thread is left behind)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads + self._retirements:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception:  # a poll must never kill the poller
                log.exception("repository poll failed")

    def _config_loop(self) -> None:
        while not self._stop.wait(self._config_poll_seconds):
            try:
                new_config = self._config_reloader()
                if new_config is not None:
                    self.reload_config(new_config)
            except Exception as error:
                log.error("model config reload failed: %s", error)

    # -- configuration ------------------------------------------------------------------------------------

    def reload_config(self, model_server_config, *, initial: bool = False) -> None:
        """Apply a ModelServerConfig (base paths already local), as ServerCore::ReloadConfig: labels are checked
        against what is AVAILABLE now, then models are added/updated/removed, and new models are awaited."""
        try:
            cfg.check_model_server_config(model_server_config, "model config")
        except cfg.ConfigError as error:
            raise invalid_argument(str(error)) from None
        configs = list(model_server_config.model_config_list.config)
        with self._sync_lock:
            with self._lock:
                new_labels = self._check_labels(configs)
                new_models = []
                wanted = {c.name for c in configs}
                for model_config in configs:
                    model = self._models.get(model_config.name)
                    if model is None or not model.configured:
                        states = model.states if model else {}
                        model = _Model(model_config.name, model_config, Path(model_config.base_path),
                                       VersionPolicy.from_model_config(model_config), states=states)
                        self._models[model.name] = model
                        new_models.append(model)
                    else:
                        if Path(model_config.base_path) != model.base_path:
                            model.failed.clear()
                        model.model_config = model_config
                        model.base_path = Path(model_config.base_path)
                        model.policy = VersionPolicy.from_model_config(model_config)
                    model.labels = new_labels.get(model.name, {})
                self._labels_ready = True
                removed = [m for name, m in self._models.items() if name not in wanted and m.configured]
                for model in removed:
                    model.configured = False
                    model.labels = {}
                    for version in list(model.live):
                        self._retire(model, version)
            for model in list(self._models.values()):
                if model.configured:
                    self._sync_model(model)
        not_loaded = [m for m in new_models if not m.live]
        if not_loaded and not initial:
            details = ", ".join(f"{{{m.name}{self._failure_summary(m)}}}" for m in not_loaded)
            raise ServingError(Code.UNKNOWN, f"{len(not_loaded)} model(s) did not become available: {details}")
        for model in not_loaded:
            log.error("model %s has no available version%s", model.name, self._failure_summary(model))

    def _failure_summary(self, model: _Model) -> str:
        errors = [s for s in model.states.values() if s.error is not None]
        if errors:
            latest = max(errors, key=lambda s: s.version)
            return f" (version {latest.version}: {latest.error.message})"
        if model.last_scan_error:
            return f" ({model.last_scan_error})"
        return ""

    def _check_labels(self, configs) -> dict[str, dict[str, int]]:
        """ServerCore::UpdateModelVersionLabelMap: every label must point at an AVAILABLE version."""
        labels: dict[str, dict[str, int]] = {}
        for model_config in configs:
            model = self._models.get(model_config.name)
            for label, version in model_config.version_labels.items():
                existing = model.labels.get(label) if model else None
                allowed = self.allow_unavailable_labels and (existing is None or existing == version)
                available = model is not None and version in model.live
                if not allowed and not available:
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {model_config.name}, which is not "
                        "currently available for inference")
                labels.setdefault(model_config.name, {})[label] = version
        return labels

    # -- the repository poll ------------------------------------------------------------------------------

    def sync(self) -> None:
        """One poll of every model's base path (what the background thread does every poll_seconds)."""
        with self._sync_lock:
            for model in list(self._models.values()):
                if model.configured and not self._stop.is_set():
                    self._sync_model(model)

    def _sync_model(self, model: _Model) -> None:
        try:
            on_disk = scan_versions(model.base_path)
        except ScanError as error:
            if str(error) != model.last_scan_error:
                log.warning("model %s: %s", model.name, error)
            model.last_scan_error = str(error)
            return  # keep serving whatever is loaded: a missing mount is not a request to unload
        model.last_scan_error = None
        aspired = self._load_aspired(model, on_disk)
        # Retire what the policy no longer wants once one aspired version serves, or when the policy wants
        # nothing on disk at all (the directories are gone); never because every aspired version is broken.
        on_disk_aspired = model.policy.aspired(on_disk)
        with self._lock:
            serving_aspired = [v for v in aspired if v in model.live]
            for version in list(model.live):
                if version not in aspired and (serving_aspired or not on_disk_aspired):
                    self._retire(model, version)

    def _load_aspired(self, model: _Model, on_disk: dict[int, Path]) -> set[int]:
        """Load the policy's versions newest first, falling back to the next newest while one fails, until
        the policy is satisfied or no candidate is left; returns the aspired versions among the loadable ones.

        A version that failed to load (and has not changed since) is no candidate: it is tried once per
        fingerprint, and it must not push a working version out of "latest N". For ``specific`` policies the
        fallback adds nothing (only the named versions are ever aspired)."""
        candidates = {v: p for v, p in on_disk.items() if v not in model.failed or model.failed[v] != fingerprint(p)}
        while not self._stop.is_set():
            aspired = model.policy.aspired(candidates)
            pending = sorted((v for v in aspired if v not in model.live), reverse=True)
            if not pending:
                return aspired
            for version in pending:
                if self._stop.is_set():
                    break
                path = on_disk[version]
                if not self._load(model, version, path, fingerprint(path)):
                    candidates.pop(version)  # the next pass of the loop aspires the next newest instead
        return model.policy.aspired(candidates)

    def _set_state(self, model: _Model, version: int, state: State, error: ServingError | None = None) -> None:
        with self._lock:
            model.states[version] = VersionStatus(version, state, error)

    def _load(self, model: _Model, version: int, path: Path, stamp: tuple) -> bool:
        self._set_state(model, version, State.START)
        self._set_state(model, version, State.LOADING)
        log.info("model %s: loading version %d from %s", model.name, version, path)
        started = time.monotonic()
        servable = None
        try:
            servable = self._loader(model.name, version, path)
            loaded = time.monotonic()
            if self.warmup is not None:
                self.warmup(servable)
        except Exception as error:
            if servable is not None:
                servable.unload()
            failure = _load_failure(error)
            model.failed[version] = stamp
            self._set_state(model, version, State.END, failure)
            self.metrics.load_attempt_count.inc(str(path), "fail")
            log.error("model %s: version %d failed to load: %s", model.name, version, failure.message)
            return False
        with self._lock:
            model.failed.pop(version, None)
            model.live[version] = _Live(servable)
            model.states[version] = VersionStatus(version, State.AVAILABLE)
        self.metrics.load_attempt_count.inc(str(path), "success")
        now = time.monotonic()
        log.info("model %s: version %d AVAILABLE (%.1f s: SavedModel %.1f s, warmup %.1f s)", model.name, version,
                 now - started, loaded - started, now - loaded)
        return True

    def _retire(self, model: _Model, version: int) -> None:
        """Take a version out of routing now; release it once its in-flight requests are done (lock held)."""
        live = model.live.pop(version)
        live.retiring = True
        model.states[version] = VersionStatus(version, State.UNLOADING)
        log.info("model %s: retiring version %d (%d request(s) in flight)", model.name, version, live.inflight)

        def finish():
            with self._lock:
                while live.inflight:
                    self._lock.wait()
            live.servable.unload()
            gc.collect()
            self._set_state(model, version, State.END)
            log.info("model %s: version %d unloaded", model.name, version)

        thread = threading.Thread(target=finish, name=f"retire-{model.name}-{version}", daemon=True)
        self._retirements = [t for t in self._retirements if t.is_alive()] + [thread]
        thread.start()

    # -- requests -----------------------------------------------------------------------------------------

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Handle:
        """A handle on the version a request asks for (NOT_FOUND / INVALID_ARGUMENT otherwise)."""
        with self._lock:
            model = self._models.get(name)
            if model is not None and not model.configured:
                model = None
            if label:
                if model is None or label not in model.labels:
                    if not self._labels_ready:
                        raise ServingError(Code.UNAVAILABLE, f"Model labels does not init yet.{label}")
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if model is None:
                raise not_found(_not_found_message(name, version))
            if version is None:
                if not model.live:
                    raise not_found(_not_found_message(name, None))
                live = model.live[max(model.live)]
            else:
                live = model.live.get(version)
                if live is None:
                    raise not_found(_not_found_message(name, version))
            live.inflight += 1
            return Handle(self, live)

    def _hold(self, live: _Live) -> None:
        with self._lock:
            live.inflight += 1

    def _release(self, live: _Live) -> None:
        with self._lock:
            live.inflight -= 1
            if live.retiring and live.inflight == 0:
                self._lock.notify_all()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: one version's status, or every version seen, newest first."""
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.states:
                raise not_found(f"Could not find any versions of model {name}")
            if version is not None:
                status = model.states.get(version)
                if status is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [status]
            return [model.states[v] for v in sorted(model.states, reverse=True)]

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(name for name, model in self._models.items() if model.configured)


def _not_found_message(name: str, version: int | None) -> str:
    request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return f"Servable not found for request: {request}"


def _load_failure(error: BaseException) -> ServingError:
    if isinstance(error, ServingError):
        return ServingError(error.code, f"warmup failed: {error.message}")
    if isinstance(error, LoadError):
        return ServingError(error.code, str(error))
    if isinstance(getattr(error, "error_code", None), int):
        return from_exception(error)  # TensorFlow's errors keep their code (INTERNAL included)
    return ServingError(Code.UNKNOWN, f"{type(error).__name__}: {error}")
