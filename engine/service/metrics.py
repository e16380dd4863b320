"""Prometheus metrics of a service, over HTTP on `--metrics HOST:PORT` (prometheus-client).

Two kinds:
- the pool's figures, read at each scrape from the Admin (one stats() call): logical and physical
  bytes, dedup ratio, unique blocks, each VM's logical bytes, under-replicated blocks, each node's
  state, and the progress of every running job (rebuild, heal, scrub, import …);
- what the NBD export serves, counted as it goes by the native request loop in a Meter (atomic
  counters, read at each scrape): requests, bytes read and written per VM (IOPS are the
  requests' rate), and a latency histogram per kind of request.

Only GET /metrics answers with them; any other path is 404 (prometheus-client's own server
answers every path with the figures, so a typo'd or probing URL looked like a scrape target).
"""

from __future__ import annotations

import itertools
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.registry import Collector

from .. import _native
from ..admin import Admin

NODE_STATES = ("up", "suspect", "down", "returning")
# From a cached 4 KiB read (tens of microseconds) to a flush that waits on a slow disk.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)


class PoolCollector(Collector):
    """The pool's figures, fresh at every scrape."""

    def __init__(self, admin: Admin):
        self.admin = admin

    def collect(self):
        s = self.admin.stats()

        def gauge(name: str, text: str, value, labels: dict | None = None):
            family = GaugeMetricFamily(name, text, labels=list(labels or {}))
            if value is not None:
                family.add_metric(list((labels or {}).values()), value)
            return family

        yield gauge("blockfold_logical_bytes", "Bytes that read as data, over every VM",
                    s.logical_bytes)
        yield gauge("blockfold_physical_bytes", "Bytes of unique blocks stored (one copy each)",
                    s.physical_bytes)
        yield gauge("blockfold_dedup_ratio", "Logical bytes over physical bytes", s.dedup_ratio)
        yield gauge("blockfold_unique_blocks", "Live blocks, each stored once", s.unique_blocks)
        yield gauge("blockfold_under_replicated_blocks",
                    "Live blocks with fewer copies than R on up nodes", s.under_replicated_blocks)
        yield gauge("blockfold_corrupt_blocks",
                    "Live blocks known to have no sound copy (reads of them fail)",
                    s.corrupt_blocks)
        yield gauge("blockfold_lost_blocks",
                    "Live blocks no node holds a copy of (their copies were lost)", s.lost_blocks)
        yield gauge("blockfold_rebuilding", "1 while the RAM metadata is rebuilt",
                    int(s.state == "rebuilding"))
        yield gauge("blockfold_fenced", "1 while another writer has the cluster and this one"
                    " waits to take it (fenced, or a standby: no export is served)",
                    int(bool(s.fenced)))
        vms = GaugeMetricFamily("blockfold_vm_logical_bytes", "Bytes that read as data, per VM",
                                labels=["vm"])
        for vm in s.vms:
            vms.add_metric([vm.name], vm.logical_bytes)
        yield vms
        nodes = GaugeMetricFamily("blockfold_node_state", "1 for the state each node is in",
                                  labels=["node", "state"])
        for node in s.nodes:
            for state in NODE_STATES:
                nodes.add_metric([node.name, state], int(node.state == state))
        yield nodes
        jobs = GaugeMetricFamily("blockfold_job_progress_ratio",
                                 "Work done over the whole, of each running job",
                                 labels=["job", "kind", "phase"])
        for job in self.admin.jobs():
            if job.state == "running":
                jobs.add_metric([str(job.id), job.kind, job.phase],
                                job.done / job.total if job.total else 0.0)
        yield jobs


class ExportCollector(Collector):
    """What the NBD export served, from the native loop's counters, at every scrape."""

    def __init__(self, meter: _native.Meter):
        self.meter = meter

    def collect(self):
        requests = CounterMetricFamily("blockfold_vm_requests",
                                       "NBD requests served, per VM and kind", labels=["vm", "op"])
        read = CounterMetricFamily("blockfold_vm_read_bytes", "Bytes read over NBD, per VM",
                                   labels=["vm"])
        written = CounterMetricFamily("blockfold_vm_written_bytes",
                                      "Bytes written over NBD, per VM", labels=["vm"])
        for vm, reads, writes, trims, read_bytes, written_bytes in self.meter.vms():
            for op, n in (("read", reads), ("write", writes), ("trim", trims)):
                requests.add_metric([vm, op], n)
            read.add_metric([vm], read_bytes)
            written.add_metric([vm], written_bytes)
        latency = HistogramMetricFamily("blockfold_nbd_request_seconds",
                                        "Time the pool takes to serve an NBD request, per kind",
                                        labels=["op"])
        bounds = [*map(str, LATENCY_BUCKETS), "+Inf"]
        for op, counts, _, seconds in self.meter.latency():
            cumulative = itertools.accumulate(counts)
            latency.add_metric([op], list(zip(bounds, cumulative)), seconds)
        yield from (requests, read, written, latency)


class Metrics:
    def __init__(self, admin: Admin):
        self.registry = CollectorRegistry()
        self.registry.register(PoolCollector(admin))
        self.meter = _native.Meter(list(LATENCY_BUCKETS))
        self.registry.register(ExportCollector(self.meter))
        self._http = None

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serves /metrics on host:port (0: any free port) from a thread, 404 elsewhere;
        returns the address."""
        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._http = make_server(host, port, only_metrics(make_wsgi_app(self.registry)), Server,
                                 handler_class=QuietHandler)
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        return host, self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def only_metrics(app):
    """The WSGI `app` at /metrics, and 404 Not Found at every other path."""
    def serve(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        return app(environ, start_response)
    return serve


class QuietHandler(WSGIRequestHandler):
    """Logs no request: a scrape every few seconds would fill the service's stderr."""

    def log_message(self, format, *args):
        pass
