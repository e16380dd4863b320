"""The RPC methods of a node: one per request type, found in a table.

Each method takes a request's JSON header (a dict) and raw payload (a memoryview) and returns
(reply header, reply payload). A request the node refuses raises NodeError with its code; every
header field is checked before it is used, so a malformed request is BAD_REQUEST and nothing
changes. Block ids travel as the first 8·n payload bytes (little-endian u64), n in the header.
"""

from __future__ import annotations

import math
import os

import asyncssh
import numpy as np

from .. import changeset
from ..net import rpc
from ..net.rpc import Code
from .errors import NodeError
from .peers import Peers, Target
from .store import NodeStore

LEASE_SECONDS = 10.0
MAX_CATALOG = 16 << 30       # a staged catalog transfer may not grow past this
MAX_TARGETS = 256            # targets one COPY may name
_REQUIRED = object()


class Handler:
    """The RPC methods, over one NodeStore shared by every channel."""

    def __init__(self, store: NodeStore, name: str):
        self.store = store
        self.name = name
        self.staged = None          # a big catalog transfer, part by part: (key, next, bytes)
        self.image: tuple[int, bytes] | None = None  # (version, catalog image) being fetched
        # This process's run: a coordinator that sees it change between a PUT and the SYNC
        # after knows the node restarted, and may have lost what it had not synced yet.
        self.incarnation = os.urandom(8).hex()
        self.methods = {
            rpc.HELLO: self.hello, rpc.HEARTBEAT: self.heartbeat,
            rpc.PUT: self.put, rpc.GET: self.get, rpc.DROP: self.drop,
            rpc.INVENTORY: self.inventory, rpc.SYNC: self.sync, rpc.SCRUB: self.scrub,
            rpc.CATALOG_VERSION: self.catalog_version, rpc.CATALOG_FETCH: self.catalog_fetch,
            rpc.CATALOG_APPLY: self.catalog_apply, rpc.CATALOG_INSTALL: self.catalog_install,
            rpc.CATALOG_PROMISE: self.catalog_promise,
            rpc.LEASE: self.lease, rpc.RELEASE: self.release, rpc.COPY: self.copy,
        }
        # What the peer key may ask (rpc.PEER_REQUESTS): its PUTs are checked (put_checked).
        self.peer_methods = {rpc.HELLO: self.hello, rpc.PUT: self.put_checked}
        # Requests that wait on other nodes: answered when done, the channel's others meanwhile.
        self.background = {rpc.COPY}
        self.peers = Peers(store)

    def call(self, kind: int, header: dict, payload: memoryview, peer: bool = False):
        """Answers one request of type `kind`, made with the peer key if `peer`: (reply header,
        reply payload), or for a type in `background` a coroutine that answers it; raises
        NodeError (or what the store raises)."""
        method = (self.peer_methods if peer else self.methods).get(kind)
        if method is None:
            raise NodeError(Code.BAD_REQUEST, f"unknown request type {kind}")
        return method(header, payload)

    # -- who we are ---------------------------------------------------------------------------

    def hello(self, header: dict, payload) -> tuple[dict, bytes]:
        """The node's figures: {name, block_size, blocks (held), capacity_bytes (room for new
        blocks), disk (the filesystem that room is on: counted once however many nodes share
        it), version and epoch (of the catalog replica), promised (the highest epoch it
        promised), memory (a RAM node), lease ({holder, process} of the running write lease, or
        null), incarnation (drawn at its start: a coordinator sees a restart it missed)}."""
        s = self.store
        replica = s.replica()
        return {"name": self.name, "block_size": s.block_size, "blocks": s.held,
                "capacity_bytes": s.capacity_bytes, "disk": s.disk, "version": replica["version"],
                "epoch": replica["epoch"], "promised": replica["promised"],
                "memory": bool(s.memory), "lease": s.lease_info(),
                "incarnation": self.incarnation}, b""

    def heartbeat(self, header: dict, payload) -> tuple[dict, bytes]:
        """hello(), after renewing the lease of `holder` (optional) for `lease` seconds if it
        holds it."""
        self.store.renew(_str(header, "holder", None), _seconds(header, "lease"))
        return self.hello(header, payload)

    # -- blocks -------------------------------------------------------------------------------

    def put(self, header: dict, payload, check: bool = False) -> tuple[dict, bytes]:
        """Stores n blocks under their ids (payload: ids, then n blocks); replies one status
        byte per id (rpc.STORED, SAME or COLLISION; with `check`, MISMATCH too), and
        {incarnation} (see sync). A rotten copy held is rewritten (STORED) by bytes that hash
        to its record; with `repair` (optional), only that: an id not held is COLLISION and
        nothing new is stored."""
        ids, blocks = _ids(header, payload)
        repair = header.get("repair", False)
        if not isinstance(repair, bool):
            raise NodeError(Code.BAD_REQUEST, "request field 'repair' must be a boolean")
        return ({"incarnation": self.incarnation},
                self.store.put(ids, blocks, repair, check).tobytes())

    def put_checked(self, header: dict, payload) -> tuple[dict, bytes]:
        """put() for the peer key, which may name any id: a new block whose bytes do not hash
        to its id (engine.blockids) is not stored, and its status is rpc.MISMATCH."""
        return self.put(header, payload, check=True)

    def get(self, header: dict, payload) -> tuple[dict, bytes]:
        """The bytes of every id held, in order; {missing: positions of the ids not held}.
        BAD_REQUEST, nothing read, if the reply could be over rpc.MAX_GATHER bytes."""
        ids = _ids(header, payload)[0]
        self._gather_bound("GET", len(ids))
        data, missing = self.store.get(ids)
        return {"missing": missing}, data

    def drop(self, header: dict, payload) -> tuple[dict, bytes]:
        """Forgets the ids (needs the lease of `holder`); {dropped: how many were held}."""
        self.store.check_lease(header.get("holder"))
        return {"dropped": self.store.drop(_ids(header, payload)[0])}, b""

    def inventory(self, header: dict, payload) -> tuple[dict, bytes]:
        """The ids held in slots from `start` on, a page at a time: {count, next (the next
        start, 0 at the end)}; payload: count ids, then count hash words (u64 each)."""
        ids, words, nxt = self.store.inventory(_int(header, "start", 0))
        return {"count": len(ids), "next": nxt}, ids.tobytes() + words.tobytes()

    def sync(self, header: dict, payload) -> tuple[dict, bytes]:
        """Makes every block put so far durable: {incarnation}, a token of this process's run,
        the same as its PUTs' replies carried unless the node restarted in between."""
        self.store.sync()
        return {"incarnation": self.incarnation}, b""

    def scrub(self, header: dict, payload) -> tuple[dict, bytes]:
        """Re-hashes the blocks in `count` slots from `start` (optional: every block): {bad:
        the ids whose bytes no longer match, blocks (read), next (the next start, 0 at the
        end)}."""
        count = header.get("count")
        bad, n, nxt = self.store.scrub(_int(header, "start", 0),
                                       None if count is None else _int(header, "count", low=1))
        return {"bad": bad, "blocks": n, "next": nxt}, b""

    def copy(self, header: dict, payload):
        """Hands this node's sound copies of ids straight to other nodes (engine.node.peers):
        `targets` is a list of {name, address (HOST:PORT), host_key (pinned), n}, the payload
        their ids, target by target. The request is checked now; returns the coroutine that
        copies and replies {targets: [{incarnation, error}]} and a status byte per id
        (rpc.STORED, SAME, COLLISION, MISMATCH, MISSING, ROTTEN or UNSENT). BAD_REQUEST if its
        distinct ids are over rpc.MAX_GATHER bytes of blocks."""
        listed = header.get("targets")
        if not isinstance(listed, list) or not 0 < len(listed) <= MAX_TARGETS:
            raise NodeError(Code.BAD_REQUEST, f"request field 'targets' must be a list of 1 to"
                                              f" {MAX_TARGETS} targets")
        targets = []
        for entry in listed:
            if not isinstance(entry, dict):
                raise NodeError(Code.BAD_REQUEST, "each of 'targets' must be an object")
            address = _str(entry, "address")
            if rpc.node_address(address) is None:
                raise NodeError(Code.BAD_REQUEST, f"bad target address {address!r}: use"
                                                  " HOST:PORT")
            host_key = _str(entry, "host_key")
            try:
                asyncssh.import_public_key(host_key)
            except ValueError:          # asyncssh.KeyImportError
                raise NodeError(Code.BAD_REQUEST, "a target's 'host_key' must be a pinned"
                                                  " public key: a node trusts no unknown host"
                                ) from None
            targets.append(Target(_str(entry, "name"), address, host_key, _int(entry, "n")))
        ids, _ = _ids({"n": sum(t.n for t in targets)}, payload)
        self._gather_bound("COPY", len(np.unique(ids)))   # read once however many targets
        return self.peers.copy(targets, ids)

    def _gather_bound(self, what: str, blocks: int) -> None:
        """Refuses a request that would have this node gather the bytes of more than
        rpc.MAX_GATHER bytes of blocks at once."""
        if blocks * self.store.block_size > rpc.MAX_GATHER:
            raise NodeError(Code.BAD_REQUEST,
                            f"{what} of {blocks} blocks of {self.store.block_size} bytes is over"
                            f" the {rpc.MAX_GATHER >> 20} MiB one request may gather: ask in"
                            " parts")

    # -- the catalog replica ------------------------------------------------------------------

    def catalog_version(self, header: dict, payload) -> tuple[dict, bytes]:
        """{version, epoch, lineage, promised} of the catalog replica (engine.lineage; 0 and []:
        none yet)."""
        return self.store.replica(), b""

    def catalog_promise(self, header: dict, payload) -> tuple[dict, bytes]:
        """Promises `epoch` (needs the lease of `holder`): no catalog change from an older
        epoch is taken after it. STALE_EPOCH unless it is above every epoch promised before.
        Replies {version, epoch, lineage, promised} of the replica."""
        self.store.check_lease(header.get("holder"))
        return self.store.promise(_int(header, "epoch", low=1)), b""

    def catalog_fetch(self, header: dict, payload) -> tuple[dict, bytes]:
        """Up to `length` bytes (at most rpc.CATALOG_PART) of the catalog image from `offset`:
        {version, size (of the whole image)}. Offset 0 takes a fresh image; later offsets read
        the same image while the version holds."""
        s = self.store
        offset = _int(header, "offset", 0)
        length = min(_int(header, "length", rpc.CATALOG_PART, low=1), rpc.CATALOG_PART)
        now = (s.epoch, s.version)
        if offset == 0 or self.image is None or self.image[0] != now:
            self.image = (now, s.catalog_image())
        (epoch, version), image = self.image
        return ({"version": version, "epoch": epoch, "size": len(image)},
                image[offset:offset + length])

    def catalog_apply(self, header: dict, payload) -> tuple[dict, bytes]:
        """Applies one changeset from (`base_epoch`, `base`) to (`epoch`, `version`) (needs the
        lease of `holder`), in parts (`part`, `more`); {staged: true} until the last part, then
        {version}. Optional, as for catalog_install: `writer` (the sender's epoch, by default
        `epoch`) and `lineage` (by default the base's, extended): an undo goes back to an
        older stamp. Raises CATALOG_BEHIND if the replica is not at the base: the caller sends
        the whole image; STALE_EPOCH if the node promised a newer epoch than `writer`."""
        s = self.store
        s.check_lease(header.get("holder"))
        base, version = _int(header, "base"), _int(header, "version")
        base_epoch, epoch = _int(header, "base_epoch", 0), _int(header, "epoch", 0)
        writer, line = _int(header, "writer", epoch), _lineage(header)
        if _int(header, "part", 0) == 0 and (s.epoch, s.version) != (base_epoch, base):
            raise NodeError(Code.CATALOG_BEHIND,
                            f"catalog replica is at version {s.version} of epoch {s.epoch},"
                            f" not {base} of epoch {base_epoch}")
        blob = self._gather_parts(rpc.CATALOG_APPLY, header, payload)
        if blob is None:
            return {"staged": True}, b""
        body, blobs = rpc.parse_body(blob)
        s.apply_changes(base, version, changeset.decode(body.get("changes"), blobs),
                        base_epoch, epoch, writer, line)
        return {"version": s.version}, b""

    def catalog_install(self, header: dict, payload) -> tuple[dict, bytes]:
        """Replaces the replica with a whole catalog image at (`epoch`, `version`) whose
        lineage is `lineage`, from the writer of epoch `writer` (needs the lease of `holder`),
        in parts like catalog_apply; {staged: true} until the last, then {version, aside}:
        aside is {epoch, version, kept} when the replica replaced was from another lineage and
        was kept aside, else null."""
        s = self.store
        s.check_lease(header.get("holder"))
        version, epoch = _int(header, "version"), _int(header, "epoch", 0)
        writer, line = _int(header, "writer", epoch), _lineage(header)
        blob = self._gather_parts(rpc.CATALOG_INSTALL, header, payload)
        if blob is None:
            return {"staged": True}, b""
        aside = s.install_catalog(blob, version, epoch, line, writer)
        return {"version": s.version, "aside": aside}, b""

    def _gather_parts(self, kind: int, header: dict, payload) -> bytes | None:
        """A transfer too big for one frame comes in parts 0, 1, …; the whole once the last
        (more=false) is in, else None. A new part 0 starts over."""
        key = (kind, header.get("holder"), header.get("version"))
        part = _int(header, "part", 0)
        if part == 0:
            self.staged = (key, 0, bytearray())
        elif self.staged is None or self.staged[:2] != (key, part):
            self.staged = None
            raise NodeError(Code.BAD_REQUEST, f"catalog transfer part {part} arrived out of order")
        buf = self.staged[2]
        buf += payload
        if len(buf) > MAX_CATALOG:
            self.staged = None
            raise NodeError(Code.BAD_REQUEST, f"catalog transfer over {MAX_CATALOG} bytes")
        if header.get("more"):
            self.staged = (key, part + 1, buf)
            return None
        self.staged = None
        return bytes(buf)

    # -- the write lease ----------------------------------------------------------------------

    def lease(self, header: dict, payload) -> tuple[dict, bytes]:
        """Grants `holder` (identified by `process`, optional) the write lease for `seconds`;
        LEASE_HELD while another's runs, unless it is `replace` (optional): a holder the caller
        found gone."""
        self.store.lease(_str(header, "holder"), _seconds(header, "seconds"),
                         _str(header, "process", None) or "", _str(header, "replace", None))
        return {}, b""

    def release(self, header: dict, payload) -> tuple[dict, bytes]:
        """Gives the lease up if `holder` holds it."""
        self.store.release(_str(header, "holder", None))
        return {}, b""


def _ids(header: dict, payload) -> tuple[np.ndarray, memoryview]:
    """The n block ids at the head of a request's payload, and what follows them."""
    n = _int(header, "n")
    if 8 * n > len(payload):
        raise NodeError(Code.BAD_REQUEST, "request names more block ids than it carries")
    return np.frombuffer(payload[:8 * n], dtype="<u8").astype(np.uint64), payload[8 * n:]


def _lineage(header: dict) -> list[list[int]] | None:
    """The optional `lineage` field: a list of [epoch, start] pairs of integers."""
    value = header.get("lineage")
    if value is None:
        return None
    if not (isinstance(value, list) and all(
            isinstance(e, list) and len(e) == 2 and all(type(x) is int and x >= 0 for x in e)
            for e in value)):
        raise NodeError(Code.BAD_REQUEST, "request field 'lineage' must be [epoch, start] pairs")
    return value


INT_MAX = 2**63 - 1      # every count, slot, epoch and version a node keeps fits in an int64


def _int(header: dict, name: str, default=_REQUIRED, low: int = 0) -> int:
    value = header.get(name, default)
    if type(value) is not int or not low <= value <= INT_MAX:      # bool is not an int here
        raise NodeError(Code.BAD_REQUEST,
                        f"request field {name!r} must be an integer from {low} to 2^63-1")
    return value


def _str(header: dict, name: str, default=_REQUIRED) -> str | None:
    value = header.get(name, default)
    if value is None and default is None:           # optional, and absent or null
        return None
    if not isinstance(value, str):
        raise NodeError(Code.BAD_REQUEST, f"request field {name!r} must be a string")
    return value


def _seconds(header: dict, name: str) -> float:
    value = header.get(name, LEASE_SECONDS)
    if type(value) not in (int, float) or not (math.isfinite(value) and value > 0):
        raise NodeError(Code.BAD_REQUEST, f"request field {name!r} must be a positive number")
    return float(value)
