"""The embedded server: models loaded, then gRPC and REST on one asyncio loop, until SIGTERM.

Threads: the event loop (both front ends, request parsing and encoding), ``num_batch_threads`` batch threads
(or a request thread pool when batching is off) that run TensorFlow, the repository poller, and short-lived
retirement threads. TensorFlow releases the GIL while it computes, so the loop keeps accepting while models run.

Shutdown (SIGTERM or SIGINT): new requests are answered UNAVAILABLE (503) at once while the predictions already
running finish (up to ``--drain-timeout-seconds``); then both listeners close, queued batches are flushed, and the
process exits 0 (``cli._exit_after_drain``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import signal
from collections.abc import Callable
from functools import partial

import grpc
from aiohttp import web

from .batching import BatchScheduler
from .config import ServingConfig, load_model_server_config
from .grpc_service import add_services
from .health import HealthService, add_health_service
from .manager import ModelManager
from .metrics import ServingMetrics
from .options import ServerOptions
from .predict import DataPlane, Limits
from .rest import RestApi
from .warmup import replay_warmup

log = logging.getLogger("detserve.serving")

# Once drained, a request still open can only be answered UNAVAILABLE (a REST body still uploading, a call that
# arrived in the last instant): closing the listeners waits this long for them, not the drain timeout again.
CLOSE_GRACE_S = 1.0



def configure_tensorflow(intra_op: int, inter_op: int) -> None:
    """Thread pools must be sized before TensorFlow runs its first op."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


class EmbeddedServer:
    def __init__(self, options: ServerOptions, config: ServingConfig):
        self.options = options
        self.config = config
        self.metrics = ServingMetrics()
        self.scheduler: BatchScheduler | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.manager: ModelManager | None = None
        self.plane: DataPlane | None = None
        self.grpc_address = ""
        self.health: HealthService | None = None
        self.rest_address = ""
        self._config_stamp: int | None = None

    # -- models -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Size TensorFlow's thread pools and load every aspired version (blocking; raises on a bad config)."""
        options, config = self.options, self.config
        configure_tensorflow(options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism)
        threads = options.request_threads or 4 * (os.cpu_count() or 1)
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="request")
        if config.batching is not None:
            self.scheduler = BatchScheduler(config.batching, self.metrics)
        self.manager = ModelManager(
            config.model_config,
            poll_seconds=options.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            metrics=self.metrics,
            config_reloader=self._read_config_file if config.config_file else None,
            config_poll_seconds=options.model_config_file_poll_wait_seconds,
        )
        if config.config_file:
            self._config_stamp = config.config_file.stat().st_mtime_ns
        self.plane = DataPlane(self.manager, self.executor, self.scheduler,
                               Limits(max_image_pixels=options.max_image_pixels,
                                      max_message_bytes=options.max_message_bytes), self.metrics)
        if options.enable_model_warmup:
            self.manager.warmup = partial(replay_warmup, self.plane)
        # What is loaded by now (TensorFlow, gRPC, aiohttp: some 350k objects) lives as long as the process.
        # Frozen out of the cyclic collector's reach, it is no longer traversed by each full collection, such as
        # the one after a version unloads, which holds the GIL: 150 ms became 45 ms (docs/performance.md). The
        # collection first, so that no garbage of the start-up is frozen with it.
        gc.collect()
        gc.freeze()
        self.manager.start()

    def _read_config_file(self):
        """The config file, re-read for --model-config-file-poll-wait-seconds (None if unchanged)."""
        path = self.config.config_file
        stamp = path.stat().st_mtime_ns
        if stamp == self._config_stamp:
            return None
        self._config_stamp = stamp
        log.info("model config %s changed: reloading", path)
        return self.config.map_config(load_model_server_config(path))

    # -- front ends ---------------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, ready: Callable[[], None] | None = None) -> None:
        """Listen until ``stop`` is set, then drain."""
        options, config = self.options, self.config
        limit = options.max_message_bytes
        grpc_server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # fail on a port in use instead of sharing it
        ])
        add_services(grpc_server, self.plane, self.manager, self.metrics, config.map_config)
        if options.enable_grpc_healthcheck_service:
            self.health = add_health_service(grpc_server)
        host = options.host
        port = grpc_server.add_insecure_port(f"{_bracket(host)}:{options.port}")
        await grpc_server.start()
        self.grpc_address = f"{host}:{port}"
        runner = None
        if options.rest_api_port:
            api = RestApi(self.plane, self.metrics, config.prometheus_path,
                          options.rest_api_timeout_in_ms / 1000 if options.rest_api_timeout_in_ms > 0 else None)
            runner = web.AppRunner(api.app(limit), handle_signals=False, access_log=None,
                                   shutdown_timeout=CLOSE_GRACE_S)
            await runner.setup()
            site = web.TCPSite(runner, host, options.rest_api_port, reuse_address=True)
            await site.start()
            self.rest_address = f"{host}:{options.rest_api_port}"
        log.info("serving %s: gRPC on %s, REST on %s%s", ", ".join(self.manager.model_names()) or "no models",
                 self.grpc_address, self.rest_address or "(off)",
                 f", metrics at {config.prometheus_path}" if config.prometheus_path and runner else "")
        if ready is not None:
            ready()
        await stop.wait()
        # Drain first, listeners open: a request arriving now is answered UNAVAILABLE (retryable) at once, where
        # closing the gRPC listener cancels the calls it has received but not yet started (CANCELLED, not
        # retried). Then close both, with what is left of the drain timeout for stragglers.
        log.info("shutting down: new requests are answered UNAVAILABLE; draining those in flight (up to %g s)",
                 options.drain_timeout_seconds)
        if self.health is not None:
            self.health.set_not_serving()  # health-checking clients move to other replicas
        if not await self.plane.drain(options.drain_timeout_seconds):
            log.warning("drain timeout: requests still running after %g s are cut off", options.drain_timeout_seconds)
        tasks = [grpc_server.stop(CLOSE_GRACE_S)]
        if runner is not None:
            tasks.append(runner.cleanup())
        await asyncio.gather(*tasks)

    def shutdown(self) -> None:
        """After the front ends have drained: flush batches, stop polling, release the models' threads."""
        if self.scheduler is not None:
            self.scheduler.stop(timeout=self.options.drain_timeout_seconds)
        if self.manager is not None:
            self.manager.stop(timeout=CLOSE_GRACE_S)  # a version still loading is abandoned: it never served
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        log.info("stopped")

    def run(self) -> int:
        """Load, serve until SIGTERM/SIGINT, drain; returns the exit code (0 after a graceful stop)."""
        self.load()

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, _on_signal, stop, signum)
            await self.serve(stop)

        try:
            asyncio.run(main())
        finally:
            self.shutdown()
        return 0


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        log.warning("second %s: exiting without waiting", signal.Signals(signum).name)
        os._exit(1)
    log.info("received %s", signal.Signals(signum).name)
    stop.set()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
