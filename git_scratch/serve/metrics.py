"""`GET /metrics`: the server's counters in Prometheus' text format, through prometheus_client (optional).

    git_scratch_requests_total{endpoint, status}     requests answered
    git_scratch_request_seconds{endpoint}            their latency (a histogram)
    git_scratch_batch_rows                           rows per batch the worker ran (a histogram)
    git_scratch_images_total                         images read from uploads (rate(): images per second)
    git_scratch_queue_depth, git_scratch_rows_in_flight, git_scratch_arriving   now
    git_scratch_clients_cut{reason}                  connections cut: header / body timeout, connection limit

Each app has its own registry, so that two apps in one process (the tests) never share a count. Without
prometheus_client every call here does nothing and /metrics answers 501 saying how to install it.
"""

from __future__ import annotations

ENDPOINTS = ("/v1/caption", "/v1/vqa", "/v1/explain", "/health", "/health/live", "/health/ready", "/metrics", "/")
INSTALL = "metrics need prometheus_client: pip install 'git_scratch[serve]' (or pip install prometheus_client)"


class Metrics:
    """The app's metrics; `now()` reads the gauges (queue depth, rows in flight, requests arriving, clients cut)
    when /metrics is scraped."""

    def __init__(self, now):
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry = None
            return
        self.prom, self.registry = prom, prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("git_scratch_requests", "requests answered", ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram("git_scratch_request_seconds", "request latency", ["endpoint"], registry=r,
                                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_rows = prom.Histogram("git_scratch_batch_rows", "rows per batch run", registry=r,
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.images = prom.Counter("git_scratch_images", "images read from uploads", registry=r)
        gauges = {"queue_depth": "requests waiting for the worker", "rows_in_flight": "rows in the running batch",
                  "arriving": "requests being received"}
        for name, doc in gauges.items():
            prom.Gauge(f"git_scratch_{name}", doc, registry=r).set_function(lambda name=name: now()[name])
        cut = prom.Gauge("git_scratch_clients_cut", "connections cut, by reason", ["reason"], registry=r)
        for reason in ("header", "body", "connections"):
            cut.labels(reason).set_function(lambda reason=reason: now()["cut"][reason])

    @staticmethod
    def endpoint(path: str) -> str:
        """The label for a path: one of ENDPOINTS, else "other" (so that clients cannot grow the label set)."""
        return path if path in ENDPOINTS else "other"

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        if self.registry is not None:
            self.requests.labels(endpoint, str(status)).inc()
            self.latency.labels(endpoint).observe(seconds)

    def batch(self, rows: int) -> None:
        if self.registry is not None:
            self.batch_rows.observe(rows)

    def read(self, n: int) -> None:
        if self.registry is not None:
            self.images.inc(n)

    def text(self) -> tuple[bytes, str] | None:
        """(the exposition, its content type), or None without prometheus_client."""
        if self.registry is None:
            return None
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST
