"""A cluster's keys in etcd (ARCHITECTURE.md, "Many writers"), through etcd's v3 HTTP gateway
(etcd3gw). Every key is under the cluster's prefix, /blockfold/ID/:

    nodes/ID       a node's liveness key, under the node's own lease; ID is its host key's
                   (engine.node.keys.host_key_id), as names are not unique:
                   {"name": the node's own (node.json), "address": HOST:PORT, "incarnation":
                   hex (the node's, as PUT and SYNC replies name it), "started": seconds
                   since the epoch}
    sessions/S     a writable coordinator's session, under its own lease:
                   {"holder": holder name, "process": holder process (engine.cluster.holder),
                   "started": seconds since the epoch}

A lease lives TTL seconds past its holder's last keepalive, so a key vanishes that long after
its process dies (at once when the process closes: it revokes its lease). etcd is never on the
data path: a process that cannot reach it goes on serving and writing, and retries.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.lease import Lease

from .errors import BlockfoldError
from .results import EtcdStatus

TTL = 10                # seconds a lease outlives its last keepalive (the design's)
KEEPALIVE = 2.0         # seconds between keepalives: four chances inside a TTL
TIMEOUT = 2.0           # seconds one request to one endpoint may take
WAIT = 1.0              # seconds a KeptKey's start or close waits for etcd (its requests' timeout)
FAILURES = (etcd_errors.Etcd3Exception, OSError, ValueError, KeyError)


class EtcdError(BlockfoldError):
    """etcd could not be reached, or refused a request."""


# The password in a URL's //USER:PASSWORD@: all up to the @, even a / that urlsplit would not
# take for part of it (better masked too much than shown).
_PASSWORD = re.compile(r"(//[^/?#@:\s,]*:)[^\s@]*@")


def masked(text: str) -> str:
    """`text` with the password of every http://USER:PASSWORD@HOST URL in it shown as ***: for
    any message that names an etcd URL given to us."""
    return _PASSWORD.sub(r"\1***@", text)


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of a client URL http://HOST:PORT (a "/" after it is taken). Raises
    BlockfoldError for another shape, for a path, query or fragment after it, and for a user and
    password in it (etcd's authentication is not supported)."""
    user = (f"etcd endpoint {masked(url)!r} names a user: etcd's authentication is not"
            " supported; use http://HOST:PORT")
    if _PASSWORD.search(url):
        raise BlockfoldError(user)
    try:
        parts = urlsplit(url)       # raises ValueError for a bracket left open ("http://[::1")
        port = parts.port
    except ValueError:
        raise BlockfoldError(f"bad etcd endpoint {masked(url)!r}: use http://HOST:PORT") from None
    if parts.username is not None:
        raise BlockfoldError(user)
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise BlockfoldError(f"bad etcd endpoint {masked(url)!r}: use http://HOST:PORT")
    # etcd3gw builds its own http://HOST:PORT/v3/...: the rest of the URL would be dropped
    # without a word. ("?" and "#" alone: urlsplit gives an empty query or fragment.)
    extra = [what for what, given in (("a path", parts.path not in ("", "/")),
                                      ("a query", "?" in url), ("a fragment", "#" in url))
             if given]
    if extra:
        said = ", ".join(extra[:-1]) + " and " + extra[-1] if len(extra) > 1 else extra[0]
        raise BlockfoldError(f"etcd endpoint {masked(url)!r} has {said}: use http://HOST:PORT")
    return parts.hostname, port


class Etcd:
    """The cluster's keys, over one or more endpoints (the first that answers serves a request).
    Each method raises EtcdError when no endpoint answers."""

    def __init__(self, endpoints: list[str], prefix: str, timeout: float = TIMEOUT):
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self._clients = [etcd3gw.Etcd3Client(host=host, port=port, timeout=timeout,
                                             api_path="/v3/", session=_direct())
                         for host, port in map(endpoint, self.endpoints)]
        self._lock = threading.Lock()       # a requests.Session is not shared between threads

    def _call(self, request):
        """request(client) on each endpoint in turn until one answers."""
        errors = []
        with self._lock:
            for url, client in zip(self.endpoints, self._clients):
                try:
                    return request(client)
                except FAILURES as e:
                    errors.append(f"{url}: {_why(e)}")
        raise EtcdError(f"etcd does not answer ({'; '.join(errors)})")

    def check(self) -> int:
        """Its member count, if it answers and has a leader. Raises EtcdError."""
        status = self._call(lambda c: c.status())
        if int(status.get("leader", 0)) == 0:
            raise EtcdError(f"etcd at {', '.join(self.endpoints)} has no leader")
        return len(self._call(lambda c: c.members()))

    def put(self, key: str, value: dict, lease: int | None = None) -> None:
        """Puts prefix + key = value (as JSON), under `lease` if given."""
        self._call(lambda c: c.put(self.prefix + key, json.dumps(value),
                                   Lease(lease, c) if lease else None))

    def under(self, key: str) -> dict[str, dict]:
        """{the rest of the key: its value} for every key under prefix + key, oldest first."""
        rows = self._call(lambda c: c.get_prefix(self.prefix + key, sort_order="ascend",
                                                 sort_target="create"))
        found = {}
        for value, meta in rows:
            try:
                found[meta["key"].decode()[len(self.prefix + key):]] = json.loads(value)
            except ValueError:
                continue        # not ours to read: a key someone else put there
        return found

    def grant(self, ttl: int = TTL) -> int:
        """A new lease of `ttl` seconds; its id."""
        return self._call(lambda c: c.lease(ttl)).id

    def keep_alive(self, lease: int) -> bool:
        """Renews `lease`; False if it had run out already (its keys are gone)."""
        return self._call(lambda c: Lease(lease, c).refresh()) > 0

    def revoke(self, lease: int) -> None:
        """Ends `lease` now: its keys go at once."""
        self._call(lambda c: Lease(lease, c).revoke())

    def revoke_holder(self, key: str) -> None:
        """Ends the lease prefix + key is under (nothing if there is no such key): how `node
        fail` unregisters a node it killed."""
        rows = self._call(lambda c: c.get(self.prefix + key, metadata=True))
        for _, meta in rows:
            if int(meta.get("lease", 0)):
                self.revoke(int(meta["lease"]))

    def status(self, names: dict[str, str]) -> EtcdStatus:
        """What it says now: health, members, the nodes and writers registered, each node by
        its name in `names` ({ID: the cluster's name}; one not there by its own). Never raises:
        an etcd that does not answer is an unhealthy status saying why."""
        try:
            members = self.check()
            keys = self.under("")
        except EtcdError as e:
            return EtcdStatus(self.endpoints, False, None, str(e), [], [])
        return EtcdStatus(self.endpoints, True, members, "",
                          registered=[names.get(k.removeprefix("nodes/"), v.get("name", k))
                                      for k, v in keys.items() if k.startswith("nodes/")],
                          writers=[v.get("holder", k) for k, v in keys.items()
                                   if k.startswith("sessions/")])

    def close(self) -> None:
        for client in self._clients:
            client.session.close()


def _why(e: BaseException) -> str:
    """One line for an etcd3gw or requests failure (their texts run to several lines)."""
    text = getattr(e, "detail_text", None) or str(e)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(e, etcd_errors.ConnectionTimeoutError):
        return "timed out"
    lines = text.strip().splitlines()
    return (lines[-1] if lines else type(e).__name__)[:200]


def _direct() -> requests.Session:
    """A session that goes straight to etcd, whatever proxy the environment names."""
    session = requests.Session()
    session.trust_env = False
    return session


class KeptKey:
    """One key under a lease of its own, kept alive by a daemon thread through a client of its
    own (shared, its requests would queue behind others' and theirs behind its own): a node's
    liveness key, a writer's session. While etcd cannot be reached it retries, and says so once
    on stderr (and once when it is registered again); a lease that ran out meanwhile is
    replaced. Neither start nor close waits more than WAIT seconds for etcd."""

    def __init__(self, endpoints: list[str], prefix: str, key: str, value: dict, what: str):
        """what: who holds it, for the lines on stderr ("node node1", "writer HOST pid N")."""
        self.etcd = Etcd(endpoints, prefix, timeout=WAIT)
        self.key = key
        self.value = value
        self.what = what
        self.lease: int | None = None
        self._stop = threading.Event()
        self._tried = threading.Event()     # its first registration answered or failed
        self._told = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"blockfold-etcd {key}")

    def start(self) -> KeptKey:
        """Registers (at once if etcd answers within WAIT), then keeps it alive."""
        self._thread.start()
        self._tried.wait(WAIT)
        return self

    def _run(self) -> None:
        self._tend()
        self._tried.set()
        while not self._stop.wait(KEEPALIVE):
            self._tend()
        # Here, not in close: a keepalive in flight holds the client until etcd answers it.
        if self.lease is not None:
            try:
                self.etcd.revoke(self.lease)
            except EtcdError:
                pass            # it runs out on its own, TTL seconds from now
        self.etcd.close()

    def _tend(self) -> None:
        try:
            if self.lease is None or not self.etcd.keep_alive(self.lease):
                if self._stop.is_set():
                    return      # closed meanwhile: no new lease, it would outlive us
                self.lease = self.etcd.grant()
                self.etcd.put(self.key, self.value, self.lease)
        except EtcdError as e:
            if not self._told:
                self._told = True
                print(f"blockfold: {self.what} is not registered in etcd, retrying every"
                      f" {KEEPALIVE:g} s: {e}", file=sys.stderr, flush=True)
            return
        if self._told:
            self._told = False
            print(f"blockfold: {self.what} is registered in etcd again", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        """Stops the keepalives and ends the lease, so the key goes now, not a TTL later. Waits
        at most WAIT: past that (etcd does not answer) its thread ends the lease once etcd
        answers the request in flight, or the lease runs out TTL seconds on."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(WAIT)
