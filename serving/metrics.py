"""Prometheus metrics under TF Serving's names, in TF Serving's exposition format.

TF Serving exports TensorFlow's monitoring metrics (``tensorflow_serving/util/prometheus_exporter.cc``): the
metric path ``/tensorflow/serving/request_count`` becomes ``:tensorflow:serving:request_count``, counters and
histograms carry a ``# TYPE`` line and no ``_total`` suffix, histograms use TensorFlow's fixed exponential
buckets, values are placed with TensorFlow's rule (a value equal to a bucket's limit counts in the next bucket),
and numbers are printed with six significant digits. This module reproduces that page, so dashboards,
recording rules and autoscaling queries written against TF Serving read the embedded server unchanged.
(prometheus_client would append ``_total`` to counters, which is why it is not used for the page itself.)
"""

from __future__ import annotations

import bisect
import re
import threading

_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9]")


def prometheus_name(path: str) -> str:
    name = _INVALID_NAME.sub(":", path)
    return "_" + name if name[:1].isdigit() else name


def _label_name(name: str) -> str:
    name = _INVALID_LABEL.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


def _label_value(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return f"{value:.6g}"


def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    """TensorFlow's ``monitoring::Buckets::Exponential``: scale * growth^i for i < count (then +Inf)."""
    return [scale * growth**i for i in range(count)]


class _Metric:
    kind = ""

    def __init__(self, path: str, description: str, labels: tuple[str, ...]):
        self.path = path
        self.name = prometheus_name(path)
        self.description = description
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _labels(self, values: tuple) -> list[str]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.path}: expected labels {self.labels}, got {values}")
        return [f'{_label_name(n)}="{_label_value(v)}"' for n, v in zip(self.labels, values, strict=True)]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, path: str, description: str, *labels: str):
        super().__init__(path, description, labels)
        self._cells: dict[tuple, int] = {}

    def inc(self, *labels, by: int = 1) -> None:
        with self._lock:
            self._cells[labels] = self._cells.get(labels, 0) + by

    def value(self, *labels) -> int:
        with self._lock:
            return self._cells.get(labels, 0)

    def lines(self) -> list[str]:
        with self._lock:
            cells = dict(self._cells)
        out = [f"# TYPE {self.name} counter"]
        for values, count in cells.items():
            out.append(f"{self.name}{{{','.join(self._labels(values))}}} {count}")
        return out


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, path: str, description: str, buckets: list[float], *labels: str):
        super().__init__(path, description, labels)
        self.limits = list(buckets)
        self._cells: dict[tuple, list] = {}  # labels -> [bucket counts (len(limits)+1), sum]

    def observe(self, *labels_and_value) -> None:
        *labels, value = labels_and_value
        labels = tuple(labels)
        index = bisect.bisect_right(self.limits, value)
        with self._lock:
            cell = self._cells.get(labels)
            if cell is None:
                cell = self._cells[labels] = [[0] * (len(self.limits) + 1), 0.0]
            cell[0][index] += 1
            cell[1] += value

    def snapshot(self, *labels) -> tuple[list[int], float]:
        """(bucket counts, sum) of one label set; zeros if it was never observed."""
        with self._lock:
            cell = self._cells.get(tuple(labels))
            return (list(cell[0]), cell[1]) if cell else ([0] * (len(self.limits) + 1), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            cells = {k: (list(v[0]), v[1]) for k, v in self._cells.items()}
        out = [f"# TYPE {self.name} histogram"]
        for values, (counts, total) in cells.items():
            labels = self._labels(values)
            prefix = f"{self.name}_bucket{{{','.join(labels)}{',' if labels else ''}"
            cumulative = 0
            for i, count in enumerate(counts):
                cumulative += count
                limit = _number(self.limits[i]) if i < len(self.limits) else "+Inf"
                out.append(f'{prefix}le="{limit}"}} {cumulative}')
            out.append(f"{self.name}_sum{{{','.join(labels)}}} {_number(total)}")
            out.append(f"{self.name}_count{{{','.join(labels)}}} {cumulative}")
        return out


class ServingMetrics:
    """The metrics both servers export (same paths, labels and buckets as TF Serving 2.x)."""

    def __init__(self):
        latency_buckets = exponential_buckets(10, 1.8, 33)  # microseconds, up to ~20 minutes
        size_buckets = exponential_buckets(1, 2, 14)
        self.request_count = Counter("/tensorflow/serving/request_count", "The total number of requests.",
                                     "model_name", "status")
        self.request_latency = Histogram(
            "/tensorflow/serving/request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            latency_buckets, "model_name", "API", "entrypoint")
        self.runtime_latency = Histogram(
            "/tensorflow/serving/runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            latency_buckets, "model_name", "API", "runtime")
        self.queuing_latency = Histogram(
            "/tensorflow/serving/batching_session/queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            exponential_buckets(100, 1.2, 52), "thread_pool_name")
        self.input_batch_size = Histogram(
            "/tensorflow/serving/batching_session/input_batch_size",
            "Tracks the batch size distribution on the inputs.", size_buckets)
        self.processed_batch_size = Histogram(
            "/tensorflow/serving/batching_session/processed_batch_size",
            "Tracks the batch size distribution on processing.", size_buckets)
        self.padding_size = Histogram(
            "/tensorflow/serving/batching_session/padding_size",
            "Tracks the padding size distribution on batches.", size_buckets, "execution_batch_size")
        self.wrapped_run_count = Counter("/tensorflow/serving/batching_session/wrapped_run_count",
                                         "Total count of run calls on the wrapped session")
        self.load_attempt_count = Counter("/tensorflow/cc/saved_model/load_attempt_count",
                                          "The number of times a SavedModel was successfully loaded.",
                                          "model_path", "status")

    def all(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in sorted(self.all(), key=lambda m: m.path):
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"
