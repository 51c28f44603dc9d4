# -*- test-case-name: tests.gateway.test_metrics -*-
"""Prometheus metrics and the health check, served on ``[listen] metrics``.

Each daemon (and each test) gets its own registry, so nothing leaks between instances.
"""

import json
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.web import resource
from twisted.web.iweb import IRequest


class Metrics:
    """The daemon's counters and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections_refused = Counter(
            "postroom_connections_refused",
            "Connections closed before any byte because no active partner allows the source address",
            ["door"],
            registry=self.registry,
        )
        self.connections_accepted = Counter(
            "postroom_connections_accepted",
            "Connections from an allowed source address handed to a door",
            ["door"],
            registry=self.registry,
        )
        self.directory_version = Gauge(
            "postroom_directory_version", "Partner directory version in use", registry=self.registry
        )
        self.directory_reloads = Counter(
            "postroom_directory_reloads", "Partner directory snapshots loaded", registry=self.registry
        )
        self.directory_errors = Counter(
            "postroom_directory_errors", "Failed partner directory polls", registry=self.registry
        )
        self.partners = Gauge("postroom_partners", "Partners by status", ["status"], registry=self.registry)
        self.messages = Counter(
            "postroom_messages", "Intake decisions: accepted, duplicate, rejected, unavailable", ["channel", "outcome"],
            registry=self.registry,
        )
        self.sftp_bans = Counter(
            "postroom_sftp_bans", "Sources banned by the SFTP door after repeated failed logins",
            registry=self.registry)
        self.sftp_transfers = Counter(
            "postroom_sftp_transfers", "Files moved through the SFTP door, by result", ["result"],
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            "postroom_commit_batch_size", "Messages made durable per group commit", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )

    def refused(self, door: str, host: str) -> None:
        """Count a connection refused by the allowlist."""
        self.connections_refused.labels(door=door).inc()

    def accepted(self, door: str, host: str) -> None:
        """Count a connection let through by the allowlist."""
        self.connections_accepted.labels(door=door).inc()


class MetricsResource(resource.Resource):
    """``GET /metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        """The current values of every metric."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._metrics.registry)


class HealthResource(resource.Resource):
    """``GET /healthz``: 200 with details when healthy, 503 with the reason when not."""

    isLeaf = True

    def __init__(self, check: Callable[[], tuple[bool, dict]]):
        super().__init__()
        self._check = check

    def render_GET(self, request: IRequest) -> bytes:
        """Run the health check and report it as JSON."""
        healthy, details = self._check()
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"status": "ok" if healthy else "unhealthy", **details}).encode("utf-8")


def operations_root(metrics: Metrics, check: Callable[[], tuple[bool, dict]]) -> resource.Resource:
    """The resource tree of the metrics listener."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"healthz", HealthResource(check))
    return root
