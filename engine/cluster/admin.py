"""ClusterAdmin: the Admin interface (engine.admin) over a cluster.

The coordinator runs in this process: an engine.pool.Pool whose block layer is ClusterBlocks and
whose catalog is a ReplicatedCatalog. A writable coordinator holds the nodes' write lease, renews
it with heartbeats, brings returning nodes up to date, and heals under-replicated blocks once they
have been short for the repair delay. In a cluster with etcd, a writable coordinator keeps its
session there (sessions/S, engine.etcd), and the views show what etcd says (EtcdStatus).

A writer that a newer one fenced (see ReplicatedCatalog.fenced) gives the lease up, and its etcd
session ends. If someone asked for it (on_reopen: a service), it then tries every RETAKE_S to
take the cluster back, and once it has the lease opens it again as a writable open does, over
the same connections, and hands the new Admin over: its own RAM state is older than the newer
writer's commits, so it is dropped, never committed. The new Admin is the receiver's to close;
the old one keeps no reference to it (no chain of Admins across take-backs).

    writing --fenced--> fenced, waiting --lease taken, reopened--> handed over (a new Admin)

A standby (standby(): `serve -c --standby`) starts where a fenced writer waits: another writer
holds the lease, so it opens the cluster read-only and takes it over by the same path once that
lease runs out (the holder died, or stopped), for the service that asked (on_reopen).

    standby, waiting --lease taken, reopened--> handed over (a new Admin)

Removing a node (remove_node, for engine.cluster.removal): the node leaves placement
(Members.leaving), heal passes copy its blocks to the others, and one commit records the
removal (its host key in meta `removed_nodes`, placement without it). A writable open whose
cluster.json still names a removed node is refused: a copy of the directory older than the
removal would count it in the write majority again.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from .. import formats, lineage
from ..actor import current as current_actor
from ..errors import BlockfoldError, CancelledError, PoolLockedError, RefusedError
from ..net import rpc
from ..fingerprint import Fingerprinter
from ..localadmin import LocalAdmin
from ..pool import Pool
from ..progress import relabelled
from ..results import (EtcdStatus, HealFigures, NodeRemoval, NodeStatus, ScrubFigures,
                       WriteQuorum)
from . import holder, lifecycle
from .blocks import ClusterBlocks
from .catalog import ReplicatedCatalog
from .config import ClusterConfig
from .failures import FailureLog
from .members import Members, NodeState

if TYPE_CHECKING:
    from ..etcd import KeptKey

HEAL_POLL = 0.2
# A heal that waits gives up once its passes made no copy for this long: longer than a hung
# node takes to be judged down (then the targets change), so only a lasting refusal (full
# targets) ends it.
HEAL_STALL = 10.0
ETCD_FRESH = 1.0        # seconds a status read from etcd is shown before it is read again
# A fenced writer tries to take its cluster back this often: one LEASE round while another
# writer holds it.
RETAKE_S = 2.0
REMOVED = "removed_nodes"   # catalog meta: {node id (lifecycle.node_id): {name, address, at, by}}
# Catalog meta, set while copies are not yet where a changed placement rule puts them (a node
# added): kept in the catalog so a writer that closes before the healer moved them (a CLI)
# leaves them for the next one.
PLACEMENT_CHANGED = "placement_changed"


class ClusterAdmin(LocalAdmin):
    kind = "cluster"

    def __init__(self, pool: Pool, members: Members, config: ClusterConfig):
        super().__init__(pool)
        self.members = members
        self.config = config
        self.name = str(config.path)
        self.readonly = pool.readonly
        self._stop = threading.Event()
        self._short_since: float | None = None
        self._fruitless = None          # (up nodes, blocks short) after a pass that did nothing
        self._rebalance = False         # a node came back: copies move back to their places
        self._move_at: float | None = None   # when the healer moves copies to a new placement
        self._healer = None
        # Held by an operator's heal or a removal's drain for all its passes: the healer runs
        # no pass of its own meanwhile (both claimed the same copies in the event log).
        self._healing = threading.Lock()
        self._failures = FailureLog(self._heal_failed)
        self._etcd = None               # a client of the cluster's etcd, made on first use
        self._etcd_made = threading.Lock()
        self._session: KeptKey | None = None
        self._etcd_read: tuple[float, EtcdStatus] | None = None     # (when, what it said)
        self._fenced_at: float | None = None    # when it gave the lease up to a newer writer
        self._newer = ""                # who has the cluster meanwhile (its lease holder)
        self._stuck = ""                # why the last try to take it back failed, if not a lease
        self._reopened = None           # takes the reopened Admin (on_reopen)
        self._said: tuple[str, str, str] | None = None      # held_by's, for a reopened Admin
        self._on_fenced = None          # told at the fencing (on_fenced)
        self._standby = False           # read-only, waiting to take over (standby)

    @property
    def pool(self) -> Pool:
        """The coordinator's pool. Raises RefusedError once handed over (_hand_over): a call
        that reached this Admin as its service took the cluster back (a status read begun just
        before) is refused, not failed on a pool released; the reopened Admin answers it."""
        if self._pool is None:
            raise RefusedError(f"the service is taking cluster {self.config.path} back: try"
                               " again")
        return self._pool

    @pool.setter
    def pool(self, pool: Pool | None) -> None:
        self._pool = pool

    @classmethod
    def open(cls, path, *, readonly: bool = False, rebuild: str | None = None,
             progress=None, wait: bool = True, actor: str = "cli",
             finishing: str | None = None) -> ClusterAdmin:
        """The cluster in `path`, opened (see LocalAdmin.open). `finishing`: the node whose
        removal is being made (engine.cluster.removal), which cluster.json may still name
        though the catalog records it removed (a removal cut short after its record)."""
        config = ClusterConfig.load(path)
        members = cls._probed(config)
        try:
            if not readonly:
                # Before the lease: on a minority's side, a live writer's lease is not why
                # this open cannot write, and waiting for it to run out would not help.
                ReplicatedCatalog.require_majority(members, config.min_replicas,
                                                   int(members.reachable_mask().sum()))
                members.take_lease()
            admin = cls._attach(members, config, readonly, rebuild, progress, actor,
                                finishing)
        except BaseException:
            members.close()
            raise
        members.start_heartbeats()
        admin._start_healer()
        return admin

    @classmethod
    def standby(cls, path, *, actor: str = "cli") -> ClusterAdmin:
        """The cluster in `path` for a standby service: opened as a writable open does if no
        one holds its write lease; else read-only, waiting (fenced() says so, as a fenced
        writer's does) to take it over once the holder's lease runs out. It tries every
        RETAKE_S from when a receiver asks for the writable Admin (on_reopen). Raises what open
        raises, and PoolLockedError from a holder that said what it is (a console, which renews
        its lease for as long as it is open)."""
        try:
            return cls.open(path, actor=actor)
        except PoolLockedError as e:
            if e.held_by:
                raise
        config = ClusterConfig.load(path)
        members = cls._probed(config)
        try:
            admin = cls._attach(members, config, True, None, None, actor)
            admin._newer = admin._lease_holder()
        except BaseException:
            members.close()
            raise
        admin._standby = True
        admin._fenced_at = time.monotonic()     # waiting from now, as a fenced writer does
        members.start_heartbeats()
        return admin

    @classmethod
    def _probed(cls, config: ClusterConfig) -> Members:
        """The members of `config`, each asked once (a node that answers is up: a first
        contact is no return). Raises BlockfoldError (no nodes)."""
        if not config.nodes:
            raise BlockfoldError(f"cluster {config.path} has no nodes: add one first")
        members = Members(config)
        try:
            members.probe_all()
            for i, node in enumerate(members.nodes):
                if node.state == NodeState.RETURNING:
                    members.mark(i, NodeState.UP)
        except BaseException:
            members.close()
            raise
        return members

    @classmethod
    def _attach(cls, members: Members, config: ClusterConfig, readonly: bool,
                rebuild: str | None, progress, actor: str,
                finishing: str | None = None) -> ClusterAdmin:
        """The coordinator over `members` (probed; holding the lease unless read-only): the
        newest catalog (a writable one promised a new epoch), the pool and its RAM state
        rebuilt. Its healer is not started yet. Writable, a cluster.json that names a node
        the catalog records removed (but `finishing`) is refused."""
        catalog = ReplicatedCatalog.load(members, config.min_replicas, config.block_size,
                                         writable=not readonly)
        if not readonly:
            removed = json.loads(catalog.get(REMOVED) or "{}")
            # A service's own config still names the nodes it removed (Members.retire).
            _refuse_removed(config, removed,
                            {finishing} | {members.names()[i] for i in members.removed})
            if catalog.version == 0:
                catalog.publish()
            # Every replica names the nodes and R: with rendezvous placement, that says
            # where each block's copies belong, whichever node the catalog is read from.
            rule = _placement_rule(config, removed)
            before = catalog.get("placement")
            if before != rule:
                catalog.set("placement", rule)
                if before:          # not a new catalog: copies are where the old rule put them
                    catalog.set(PLACEMENT_CHANGED, "1")
            for i, node in enumerate(members.nodes):
                if node.state == NodeState.UP and (node.epoch, node.version) != catalog.stamp:
                    catalog.catch_up(i)
        blocks = ClusterBlocks(members, config, Fingerprinter(config.block_size),
                               int(catalog.get("collisions") or 0))
        pool = Pool.attach(config.path, catalog, blocks, readonly=readonly, rebuild=rebuild,
                           progress=progress, wait=True, actor=actor)
        if not readonly:
            catalog.ship()      # "in use" (dirty) on the nodes now: a crash shows next open
        admin = cls(pool, members, config)
        if not readonly and catalog.get(PLACEMENT_CHANGED):
            # As for a node down: a node added and soon removed again costs no moves.
            admin._move_at = time.monotonic() + config.repair_delay
        if config.etcd and not readonly:
            from ..etcd import KeptKey      # on use, as lifecycle.etcd_of says why
            admin._session = KeptKey(
                config.etcd.endpoints, config.etcd.prefix, f"sessions/{secrets.token_hex(8)}",
                {"holder": members.holder, "process": members.process, "started": time.time()},
                f"writer {members.holder}").start()
        admin._tell_asides()
        return admin

    def _start_healer(self) -> None:
        self._healer = threading.Thread(target=self._tend, daemon=True, name="blockfold-healer")
        self._healer.start()

    # -- returning nodes and heal -------------------------------------------------------------

    def _rejoin_returning(self) -> None:
        for i, node in enumerate(self.members.nodes):
            if node.state == NodeState.RETURNING:
                self._rejoin(i)

    def _rejoin(self, i: int) -> bool:
        """Catches a returning node up: the catalog, then which blocks it holds."""
        with self.pool.still() as open_:
            if not open_:
                return False
            if not self.readonly and not self.pool.catalog.catch_up(i):
                return False
            self.pool.blocks.rejoin(i, reclaim=not self.readonly)
            self.members.mark(i, NodeState.UP)
            self._rebalance = True
        self._tell_asides()
        return True

    def _tell_asides(self) -> None:
        """An event of kind `catalog` for each replica a node kept aside (stderr told already)."""
        asides, self.pool.catalog.asides = self.pool.catalog.asides, []
        for told in asides:
            self.pool.log_event("catalog", told)

    def _tend(self) -> None:
        """Beside the heartbeats (which must never wait on the pool): catches returning nodes
        up, and heals once blocks have been short of R copies for the repair delay. A failing
        round is told (see _heal_failed) and the next one tries again. Once fenced, it only
        waits to take the cluster back (_retake_until_handed_over)."""
        while not self._stop.wait(HEAL_POLL):
            try:
                self._tend_once()
            except Exception as e:     # noqa: BLE001 - the loop must outlive any one failure
                if self._stop.is_set():
                    return             # closing: a heal cut short is no failure
                message = str(e) if isinstance(e, BlockfoldError) else f"{type(e).__name__}: {e}"
                self._failures.failed(message)
            if self._fenced_at is not None:
                self._retake_until_handed_over()
                return

    def _tend_once(self) -> None:
        self._rejoin_returning()
        if self.readonly:
            self.pool.blocks.take_repairs()     # counted in stats; only a writer logs events
            return
        if self.pool.catalog.fenced:
            self._give_up_lease()       # and the healer waits to take it back (_tend)
            return
        self._log_repairs()
        for news in self.members.news():
            self._record("node", news)
        if not self._healing.acquire(blocking=False):
            return                      # an operator's heal or a drain runs: it heals
        try:
            self._tend_heal()
        finally:
            self._healing.release()

    def _tend_heal(self) -> None:
        """The healer's own passes (a rebalance's, a placement change's; a shortfall's after
        the repair delay)."""
        moving = self._move_at is not None and time.monotonic() >= self._move_at
        if self._rebalance or moving:
            self._rebalance = False
            figures = self._heal_pass("engine", cancel=self._stop)
            if moving:
                self._move_at = None     # left undone (a node down): the next open's
                if not figures["under_replicated"] and not figures["unreachable"]:
                    self._record("heal", "placement changed: every block's copies are on the"
                                 " nodes it names now", meta={PLACEMENT_CHANGED: ""})
        if self.pool.blocks.under_replicated() == 0:
            self._short_since = None
            return
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = now
        if now - self._short_since >= self.config.repair_delay:
            # A pass that copied and dropped nothing (too few nodes up for R copies) is not
            # run again, nor logged again, until a node comes or goes or the shortfall changes.
            state = (tuple(self.members.up_mask()), self.pool.blocks.under_replicated())
            if state == self._fruitless:
                return
            figures = self._heal_pass("engine", cancel=self._stop)
            self._fruitless = (None if figures["copied"] or figures["dropped"] else
                               (tuple(self.members.up_mask()),
                                self.pool.blocks.under_replicated()))

    def _give_up_lease(self) -> None:
        """Once fenced, the lease goes, on every node: the nodes this writer still held (a
        minority's, after a partition heals) stayed `returning` to the newer writer, never
        caught up, for as long as this process ran. Its commits are refused from then on (the
        nodes want the lease), and its healer heals nothing more."""
        if self._fenced_at is not None:
            return
        self.members.release_lease()
        self._end_session()         # not a writer any more: etcd must not name it as one
        self._newer = self._lease_holder()
        # Last: fenced() says who has the cluster from this moment (a status read in between
        # said "a newer writer has cluster C" without naming it).
        self._fenced_at = time.monotonic()
        if self._reopened is None:
            print(f"blockfold: {self.pool.catalog.fenced_line()}: gave the write lease up;"
                  " nothing more is written here (close it)", file=sys.stderr, flush=True)
        else:
            print(f"blockfold: {self.fenced()}", file=sys.stderr, flush=True)
        if self._on_fenced is not None:
            self._on_fenced(self.fenced())

    def on_reopen(self, reopened) -> None:
        """Once fenced, try every RETAKE_S to take the cluster back, and hand the reopened
        Admin to reopened(new), from the healer's thread; new connections are the caller's
        to serve from it, and whatever it served from this one must stop serving before it
        returns (this Admin's pool is released then, its changes never committed)."""
        self._reopened = reopened
        if self._standby and self._healer is None:
            self._start_healer()    # a standby takes the cluster over only for a receiver

    def on_fenced(self, fenced) -> None:
        """fenced(line) is called from the healer's thread once this writer is fenced, after it
        gave the lease up (`line`: what fenced() says); a reopened Admin tells it too."""
        self._on_fenced = fenced

    def fenced(self) -> str:
        """Empty while this coordinator may write; once fenced, one line saying so, who has the
        cluster (or why it cannot be taken back), and whether it waits to take it back."""
        if self._fenced_at is None:
            return ""
        if self._standby:
            holder = self._newer or "another writer"
            then = (f"cannot take it over: {self._stuck}" if self._stuck else
                    "taking it over when its lease runs out")
            return f"standby: cluster {self.config.path} is held by {holder}; {then}"
        newer = f" ({self._newer})" if self._newer else ""
        then = ("nothing more is written here (close it)" if self._reopened is None else
                f"cannot take it back: {self._stuck}" if self._stuck else
                "waiting to take it back")
        return f"fenced: a newer writer has cluster {self.config.path}{newer}; {then}"

    def _lease_holder(self) -> str:
        """Who holds the lease on the nodes that answer (holder.name()), or ""."""
        up = [i for i, n in enumerate(self.members.nodes) if n.state != NodeState.DOWN]
        replies = self.members.call_many(dict.fromkeys(up, (rpc.HELLO, {}, b"")), timeout=2.0)
        holders = [r[0]["lease"]["holder"] for r in replies.values()
                   if not isinstance(r, Exception) and r[0].get("lease")]
        return max(set(holders), key=holders.count) if holders else ""

    def _retake_until_handed_over(self) -> None:
        """Fenced, with someone to take a reopened Admin: one try every RETAKE_S until one
        succeeds (then this Admin is done) or the Admin closes. A try that fails other than on
        another's lease is told once per distinct reason, like a heal's failure."""
        failures = FailureLog(lambda message: print(f"blockfold: {message}", file=sys.stderr,
                                                    flush=True))
        while self._reopened is not None and not self._stop.wait(RETAKE_S):
            try:
                admin = self._retake()
            except Exception as e:     # noqa: BLE001 - the loop must outlive any one failure
                self._stuck = str(e) if isinstance(e, BlockfoldError) else repr(e)
                failures.failed(f"cannot take cluster {self.config.path} back: {self._stuck}")
                continue
            if admin is not None:
                self._hand_over(admin)
                return

    def _retake(self) -> ClusterAdmin | None:
        """One try: None while another writer holds the lease; else the cluster opened again
        as a writable open does (a majority answers and promises a new epoch, the newest
        catalog, the RAM state rebuilt from it) over this Admin's members. Raises
        BlockfoldError (a minority answers, say), with the lease given up again."""
        members = self.members
        ReplicatedCatalog.require_majority(members, self.config.min_replicas,
                                           int(members.reachable_mask().sum()))
        try:
            members.take_lease()
        except PoolLockedError:
            self._newer, self._stuck = self._lease_holder() or self._newer, ""
            return None
        for i, node in enumerate(members.nodes):
            if node.state == NodeState.RETURNING:   # a fresh open: caught up by it, as at open
                members.mark(i, NodeState.UP)
        try:
            if self._stop.is_set():
                raise CancelledError("closing")
            admin = self._attach(members, self.config, False, None, None, self.pool.actor)
        except BaseException:
            members.release_lease()
            raise
        admin._reopened, admin._on_fenced = self._reopened, self._on_fenced
        if self._said is not None:      # under the lease's new holder name
            try:
                admin.held_by(*self._said)
            except OSError:
                pass        # a refused opener is told of the lease alone
        return admin

    def _hand_over(self, admin: ClusterAdmin) -> None:
        """The reopened Admin takes this one's place (the events say so), then this one's pool
        is released without a commit (nothing written through it since the fencing was ever
        acknowledged as durable: every flush failed) and let go, so its memory is freed. The
        reopened Admin is the caller's from then on, to close; closing this one only stops its
        threads."""
        waited = time.monotonic() - self._fenced_at
        newer = f" ({self._newer})" if self._newer else ""
        catalog = admin.pool.catalog
        loaded = (f"epoch {catalog.epoch}, version {catalog.version}), writing as epoch"
                  f" {catalog.writer_epoch}")
        if self._standby:
            told = (f"took cluster {self.config.path} over after {waited:.1f} s as a standby:"
                    f" the lease of {self._newer or 'its writer'} ended; opened from the"
                    f" newest catalog ({loaded}")
        else:
            admin._record("catalog", f"fenced for {waited:.1f} s: a newer writer{newer} took"
                                     f" cluster {self.config.path} (our epoch"
                                     f" {self.pool.catalog.writer_epoch} refused); nothing"
                                     " written here meanwhile was committed")
            told = (f"took cluster {self.config.path} back: reopened from the newest catalog"
                    f" ({loaded}")
        admin._record("catalog", told)
        print(f"blockfold: {told}", file=sys.stderr, flush=True)
        try:
            self._reopened(admin)
        finally:
            admin._start_healer()
            # Let go before it is closed: a call reaching this Admin from now on is refused
            # (see pool), not run on a pool being closed.
            pool, self.pool = self.pool, None
            pool.close(commit=False)
            if self._etcd:
                self._etcd.close()      # the successor made its own client and session

    def _heal_pass(self, actor: str, progress=None, cancel=None, told: bool = False) -> dict:
        """One heal pass; its start and end are events when it had work (or `told`: an
        operator's heal, whose start and end its caller records)."""
        short = self.pool.blocks.under_replicated()
        if short and not told:
            self._record("heal", f"heal started: {formats.count(short)} blocks under-replicated",
                         actor)
        figures = self.pool.blocks.heal(progress, cancel)
        if figures["relayed"]:
            print(f"blockfold: heal: {_relayed(figures)}", file=sys.stderr, flush=True)
        if (short or figures["copied"] or figures["dropped"]) and not told:
            self._record("heal", _healed(figures), actor)
        return figures

    def _record(self, kind: str, message: str, actor: str = "engine",
                meta: dict | None = None) -> str:
        """An event of this coordinator's (a writable one's); one that cannot be committed (no
        node to take the catalog) is told on stderr instead of failing what it describes.
        `meta`: catalog meta keys set in the same commit. Returns "" (recorded, or read-only:
        no events), else why it was not recorded."""
        if self.readonly:
            return ""
        try:
            self.pool.log_event(kind, message, actor, meta=meta)
        except BlockfoldError as e:
            print(f"blockfold: event not recorded ({message}): {e}", file=sys.stderr,
                  flush=True)
            return str(e)
        return ""

    def _log_repairs(self) -> None:
        """An event (kind `repair`) per node and actor for the rotten copies rewritten since
        the last call; the reads that repaired them could not commit one themselves."""
        grouped: dict[tuple[str, str], list[int]] = {}
        for block_id, node, actor in self.pool.blocks.take_repairs():
            grouped.setdefault((node, actor or self.pool.actor), []).append(block_id)
        for (node, actor), ids in grouped.items():
            shown = ", ".join(f"{i:016x}" for i in ids[:3]) + (" …" if len(ids) > 3 else "")
            self.pool.log_event("repair", f"node {node}: {formats.count(len(ids))} rotten"
                                f" {'copy' if len(ids) == 1 else 'copies'} rewritten from a"
                                f" sound replica ({shown})", actor)

    def _heal_failed(self, message: str) -> None:
        """A failure of the healer, once per distinct message (engine.cluster.failures): a line
        on stderr and, on a writable cluster, an event of kind `heal`."""
        print(f"blockfold: heal failed: {message}", file=sys.stderr, flush=True)
        if self.readonly:
            return
        try:
            self.pool.log_event("heal", f"heal failed: {message}")
        except Exception as e:     # noqa: BLE001 - the cause may be what stops commits too
            print(f"blockfold: heal failed, and the event was not recorded: {e}",
                  file=sys.stderr, flush=True)

    def heal(self, wait: bool = True, progress=None, cancel=None) -> HealFigures:
        """Re-replicates every under-replicated block; with wait, until none is left."""
        if self.readonly:
            raise BlockfoldError("heal needs a writable cluster")
        actor = current_actor(self.pool.actor)
        with self._operator_heal(cancel):
            short = self.pool.blocks.under_replicated()
            self._record("heal", f"heal started: {formats.count(short)} blocks"
                                 " under-replicated", actor)
            figures = None
            try:
                figures = self._heal(wait, progress, cancel)
                return figures
            finally:
                self._record("heal", _healed(asdict(figures)) if figures
                             else "heal stopped before it was done", actor)

    @contextmanager
    def _operator_heal(self, cancel):
        """Holds the healer off for an operator's heal or a drain, once a pass of its own that
        runs has ended (its copies are its own: the heal counts what is short after it).
        Raises CancelledError if `cancel` is set meanwhile."""
        while not self._healing.acquire(timeout=HEAL_POLL):
            if cancel is not None and cancel.is_set():
                raise CancelledError("heal cancelled")
        try:
            yield
        finally:
            self._healing.release()

    def _pass(self, progress, cancel) -> HealFigures:
        """One heal pass (heal's and a removal's drain), after a round of heartbeats and with
        the returning nodes caught up."""
        self.members.probe_all()
        self._rejoin_returning()
        return HealFigures(**self._heal_pass("", progress, cancel, told=True))

    def _heal(self, wait: bool, progress, cancel) -> HealFigures:
        """The passes' figures summed (HealFigures): each pass is checked on its own."""
        replicas = self.config.replicas
        stop = cancel or threading.Event()      # waits between passes end early on a cancel
        stall = _Stall()
        total = None
        while True:
            figures = self._pass(progress, cancel)
            total = figures if total is None else _summed(total, figures)
            if not wait or figures.under_replicated == 0:
                return total
            if stall.stalled(figures):
                raise BlockfoldError(
                    f"heal made no copy for {HEAL_STALL:.0f} s:"
                    f" {formats.count(figures.under_replicated)} blocks are still"
                    f" under-replicated ({figures.relayed_why or 'no node took a copy'})")
            if figures.unreachable and not figures.copied:
                raise BlockfoldError(f"{figures.unreachable} blocks have no reachable copy:"
                                     " restore the nodes that hold them")
            up = int(self.members.placeable_mask().sum())
            if up < replicas:
                raise BlockfoldError(f"only {up} nodes are up: {replicas} copies of every block"
                                     f" need {replicas}; restore a node first")
            if stop.wait(HEAL_POLL):
                raise CancelledError("heal cancelled")

    def scrub(self, rate=None, progress=None, cancel=None):
        """Every reachable node re-reads its copies (the pool's scrub over ClusterBlocks.scrub:
        rate, resume and progress alike); each rotten copy is rewritten from a sound replica,
        and a block with none left is remembered as corrupt."""
        blocks = self.pool.blocks
        before = blocks.scrub_repaired
        raw = self.pool.scrub(rate, progress, cancel)
        self._log_repairs()
        return ScrubFigures(**raw, repaired=blocks.scrub_repaired - before)

    # -- views: the pool's own, with what only a cluster knows --------------------------------

    def _replication(self, raw: dict) -> dict:
        return {"replicas": self.config.replicas, "min_replicas": self.config.min_replicas,
                "under_replicated_blocks": raw.get("under_replicated_blocks"),
                "lost_blocks": raw.get("lost_blocks")}

    def stats(self):
        # Free slots belong to each node's own store: the coordinator has none to count.
        return replace(super().stats(), free_slots=None, etcd=self.etcd_status(),
                       fenced=self.fenced())

    def etcd_status(self) -> EtcdStatus | None:
        """What the cluster's etcd says (read again once ETCD_FRESH old); None without one."""
        if self.config.etcd is None:
            return None
        now = time.monotonic()
        if self._etcd_read is None or now - self._etcd_read[0] >= ETCD_FRESH:
            self._etcd_read = (now, self._client().status(lifecycle.etcd_names(self.config)))
        return self._etcd_read[1]

    def _client(self):
        """The client of the cluster's etcd (engine.etcd.Etcd), made once."""
        with self._etcd_made:
            if self._etcd is None:
                self._etcd = lifecycle.etcd_of(self.config)
            return self._etcd

    def _rebuild_figures(self, raw: dict):
        # No data file (references past its end are missing blocks here), no slots.
        return replace(super()._rebuild_figures(raw), bad_references=None,
                       missing_blocks=raw["missing_blocks"], free_slots=None,
                       capacity_slots=None, repaired_copies=raw.get("repaired_copies"))

    def nodes(self):
        return self._nodes({})

    def _nodes(self, raw: dict) -> list[NodeStatus]:
        """Per node: state and heartbeat figures (latency, capacity, blocks it stores), the live
        blocks the coordinator knows it holds, and how many of those are under-replicated. A down
        node has no latency, capacity or count of blocks stored: its last heartbeat (if this
        process ever had one) says nothing about it now. Fenced, the coordinator's two counts
        are None: they are of its state, older than the newer writer's commits (the rest is the
        nodes' own, as they answer now: what an operator of a fenced service needs)."""
        blocks = self.pool.blocks
        if self._fenced_at is None:
            live, short = blocks.per_node()
        else:
            live = short = [None] * len(self.members.nodes)
        down = [node.state == NodeState.DOWN for node in self.members.nodes]
        etcd = self.etcd_status()
        registered = (set(etcd.registered) if etcd and etcd.healthy else None)
        present = set(self.members.present())
        return [NodeStatus(name=entry.name, address=entry.address, state=node.state,
                           latency_ms=None if down[i] else node.latency_ms,
                           capacity_bytes=None if down[i] else node.capacity_bytes,
                           blocks=None if down[i] else node.blocks, live_blocks=_int(live[i]),
                           under_replicated=_int(short[i]), weight=entry.weight,
                           catalog_version=node.version, last_seen=node.seen,
                           error=node.error if node.state == NodeState.DOWN else "",
                           registered=None if registered is None else entry.name in registered)
                for i, (entry, node) in enumerate(zip(self.config.nodes, self.members.nodes))
                if i in present]

    # -- simulated loss -----------------------------------------------------------------------

    def only_copies(self, name: str) -> int:
        return self.pool.blocks.only_on(self.members.index(name))

    def writes_without(self, name: str) -> WriteQuorum:
        i = self.members.index(name)
        left = sum(node.state != NodeState.DOWN for k, node in enumerate(self.members.nodes)
                   if k != i)
        return WriteQuorum(nodes=self.members.count(), left=left,
                           need=self.pool.catalog.needed)

    def fail_node(self, name: str) -> str:
        actor = current_actor(self.pool.actor)      # first: a handed-over Admin acts on nothing
        # The file, not our copy: a CLI may have restarted the node since we opened (a new pid).
        config = ClusterConfig.load(self.config.path)
        lifecycle.check_failable(config, name)
        # Recorded before the kill, while the node still takes catalog changes: after it, a
        # fail that leaves fewer nodes than a write needs could not commit its own event.
        unrecorded = self._record("node", f"failed {name} (its process killed)", actor)
        lifecycle.fail_node(config, name)
        self._etcd_read = None          # it is unregistered now: the next view reads etcd again
        self.members.mark_failed(self.members.index(name),
                                 f"failed by {actor}: its process was killed")
        return unrecorded

    def restore_node(self, name: str) -> None:
        actor = current_actor(self.pool.actor)
        lifecycle.restore_node(ClusterConfig.load(self.config.path), name)
        self._etcd_read = None
        self.members.follow()       # it may have started on another port
        i = self.members.index(name)
        self.members.probe(i)
        if self.members.nodes[i].state == NodeState.RETURNING:
            self._rejoin(i)
        self._record("node", f"restored {name} (its process restarted)", actor)

    # -- removing a node (engine.cluster.removal runs it) ---------------------------------------

    def removal(self, name: str, force: bool = False) -> NodeRemoval:
        if self.readonly:
            raise BlockfoldError("removing a node needs a writable cluster")
        # The file, not our copy: it no longer names the nodes removed since we opened.
        config = ClusterConfig.load(self.config.path)
        lifecycle.check_removable(config, name)
        lifecycle.check_no_removal(config)
        i = self.members.index(name)
        node = self.members.nodes[i]
        short, bare = self.pool.blocks.without(i)
        live, _ = self.pool.blocks.per_node()
        others = self.members.up_mask()
        others[i] = False
        up = int(others.sum())
        left = self.members.count() - 1
        down = node.state == NodeState.DOWN
        plan = NodeRemoval(node=name, state=str(node.state), blocks=int(live[i]), short=short,
                           lost=bare if down else 0, nodes_left=left,
                           need=max(self.config.min_replicas, lineage.majority(left)),
                           block_size=self.block_size,
                           drained=lifecycle.node_id(self.config.node(name)) in self._removed())
        if plan.drained:
            return plan
        replicas = self.config.replicas
        if short and up < replicas:
            raise BlockfoldError(
                f"removing {name} needs {replicas} copies of every block on the other nodes,"
                f" and only {formats.counted(up, 'node')} of them {'is' if up == 1 else 'are'}"
                " up: restore a node first; nothing changed")
        if plan.lost and not force:
            raise BlockfoldError(
                f"node {name} is down, and {formats.counted(plan.lost, 'block')}"
                f" ({formats.size(plan.lost * self.block_size)}) have no copy on any other node"
                f" that answers (it holds the only ones): `node restore {name}` to copy them"
                " first, or --force to remove it anyway and lose them; nothing changed")
        return plan

    def remove_node(self, name: str, force: bool = False, delete_data: bool = False,
                    progress=None, cancel=None) -> NodeRemoval:
        plan = self.removal(name, force)
        # The healer is held off until it has left: the drain's copies are the removal's.
        with lifecycle.removing(self.config, name), self._operator_heal(cancel):
            actor = current_actor(self.pool.actor)
            i = self.members.index(name)
            copied = lost = 0
            if not plan.drained:
                self._record("node", f"removing {name}: {formats.counted(plan.short, 'block')}"
                                     " to copy to the other nodes", actor)
                self.members.leaving = i
                try:
                    copied = self._drain(relabelled(progress, f"draining {name}"), cancel)
                    # Forced past a node down with the only copies: those are lost now.
                    lost = self.pool.blocks.without(i)[1] if plan.lost else 0
                    self._commit_removal(name, copied, lost, actor)
                except BaseException as e:
                    self.members.leaving = None     # back in placement: heal refills it
                    # A Ctrl-C's KeyboardInterrupt says nothing of itself ("stopped ()").
                    why = str(e) or ("interrupted" if isinstance(e, KeyboardInterrupt)
                                     else type(e).__name__)
                    self._record("node", f"removing {name} stopped ({why}): it stays in the"
                                         " cluster", actor)
                    raise
            # From here on the others are the cluster: the next commit (the close's, at least)
            # needs a majority of them, as every open will.
            self.pool.blocks.forget(i)
            self.members.retire(i)
            self._etcd_read = None
            left = lifecycle.leave(self.config.path, name, delete_data)
        return replace(plan, copied=copied, lost=lost, drained=True, address=left["address"],
                       local=left["local"], data=left["data"], deleted=left["deleted"])

    def _drain(self, progress, cancel) -> int:
        """Heal passes, with the leaving node out of placement, until every live block that
        has a reachable copy has R copies on the other nodes; the copies made. Raises
        BlockfoldError once the passes made no copy for HEAL_STALL or fewer than R other nodes
        are up, CancelledError."""
        stop = cancel or threading.Event()
        stall = _Stall()
        copied = 0
        while True:
            figures = self._pass(progress, cancel)
            copied += figures.copied
            if figures.under_replicated <= figures.unreachable:
                return copied       # what is left has no copy to make one from
            if stall.stalled(figures):
                raise BlockfoldError(
                    f"the drain made no copy for {HEAL_STALL:.0f} s:"
                    f" {formats.count(figures.under_replicated)} blocks are still short of"
                    f" {self.config.replicas} copies on the other nodes"
                    f" ({figures.relayed_why or 'no node took a copy'})")
            up = int(self.members.placeable_mask().sum())
            if up < self.config.replicas:
                raise BlockfoldError(f"only {formats.counted(up, 'other node')} up:"
                                     f" {self.config.replicas} copies of every block need"
                                     f" {self.config.replicas}; restore a node first")
            if stop.wait(HEAL_POLL):
                raise CancelledError("removal cancelled")

    def _commit_removal(self, name: str, copied: int, lost: int, actor: str) -> None:
        """One commit, while the node is still counted in the majority: the removal's event,
        its id among the removed, placement without it."""
        entry = self.config.node(name)
        removed = self._removed()
        removed[lifecycle.node_id(entry)] = {"name": name, "address": entry.address,
                                             "at": time.time(), "by": actor}
        gone = (f"; {formats.counted(lost, 'block')} ({formats.size(lost * self.block_size)})"
                " lost, their only copies on it (removed with --force)" if lost else "")
        self.pool.log_event(
            "node", f"removed {name}: {formats.counted(copied, 'copy', 'copies')} made on the"
                    f" other nodes{gone}", actor,
            meta={REMOVED: json.dumps(removed), "placement": _placement_rule(self.config,
                                                                             removed)})

    def _removed(self) -> dict:
        """The catalog's record of removed nodes (REMOVED)."""
        return json.loads(self.pool.catalog.get(REMOVED) or "{}")

    def held_by(self, what: str, command: str, advice: str) -> None:
        """A cluster's write lease names its holder's host and pid; DIR/holder.json says the
        rest, for the openers the lease refuses (engine/cluster/holder.py): "cluster C is held
        by `what` (pid N, `command`): `advice`". Raises OSError."""
        holder.note(self.config.path, self.members.holder, what, command, advice)
        self._said = (what, command, advice)

    def close(self) -> None:
        self._stop.set()
        if self._healer and self._healer is not threading.current_thread():
            self._healer.join(10)
        if self._pool is None:
            return      # handed over: its pool was released then, its members are the new one's
        try:
            self.pool.close()       # fenced: its commit is refused, and the caller told
        finally:
            if self._said is not None:
                holder.unnote(self.config.path, self.members.holder)
            self.members.close()
            self._end_session()     # after the lease: no moment without either
            if self._etcd:
                self._etcd.close()

    def _end_session(self) -> None:
        """Ends this writer's session in etcd (its key goes at once), if it has one."""
        if self._session:
            self._session.close()
            self._session = None


def _placement_rule(config: ClusterConfig, removed: dict) -> str:
    """Meta `placement`: R, min_replicas and the nodes with their weights, but those
    `removed` (REMOVED's record)."""
    return json.dumps(
        {"replicas": config.replicas, "min_replicas": config.min_replicas,
         "nodes": [{"name": e.name, "weight": e.weight} for e in config.nodes
                   if lifecycle.node_id(e) not in removed]})


def _refuse_removed(config: ClusterConfig, removed: dict, known: set) -> None:
    """Raises BlockfoldError if cluster.json names a node the catalog records removed (but
    those `known`: a removal being finished, or made by this process): a copy of the
    directory older than the removal, which would count the node in the write majority and
    give it copies again."""
    for entry in config.nodes:
        told = removed.get(lifecycle.node_id(entry))
        if told and entry.name not in known:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(told.get("at", 0)))
            raise BlockfoldError(
                f"cluster {config.path}: cluster.json names node {entry.name}, which was"
                f" removed from the cluster on {when} by {told.get('by')}: this cluster.json is"
                " older than the removal (use the directory it was made in; a removed node"
                " rejoins only as a new one, from a new data directory), or the removal was cut"
                f" short (`blockfold cluster remove {config.path} {entry.name}` finishes it)")


def _int(count) -> int | None:
    """A numpy count as a plain int; None stays None (not known)."""
    return None if count is None else int(count)


class _Stall:
    """How long heal passes have gone without making or dropping a copy."""

    def __init__(self):
        self.moved = time.monotonic()

    def stalled(self, figures: HealFigures) -> bool:
        """True once passes have made or dropped no copy for HEAL_STALL, this one included."""
        if figures.copied or figures.dropped:
            self.moved = time.monotonic()
        return time.monotonic() - self.moved > HEAL_STALL


def _summed(before: HealFigures, then: HealFigures) -> HealFigures:
    """Two heal passes' figures as one heal's: the copies, relays and drops of both, their
    reasons for relays (each once), and what the later left unreachable and under-replicated."""
    why = dict.fromkeys(w for f in (before, then) for w in f.relayed_why.split("; ") if w)
    return replace(then, copied=before.copied + then.copied,
                   relayed=before.relayed + then.relayed, relayed_why="; ".join(why),
                   dropped=before.dropped + then.dropped)


def _healed(figures: dict) -> str:
    """A heal pass's end, for the event log."""
    relayed = f" ({_relayed(figures)})" if figures["relayed"] else ""
    return (f"heal ended: {formats.count(figures['copied'])} copies made{relayed},"
            f" {formats.count(figures['dropped'])} dropped,"
            f" {formats.count(figures['under_replicated'])} blocks still under-replicated")


def _relayed(figures: dict) -> str:
    """The copies a heal pass made through the coordinator, and why."""
    return (f"{formats.count(figures['relayed'])} copies went through the coordinator, not"
            f" from node to node: {figures['relayed_why']}")
