"""What the Admin returns: frozen dataclasses with the same fields whichever implementation answers.

A figure that does not apply to an implementation (free slots of a cluster, the latency of an
embedded pool) is None, never a stand-in value; so is a block-layer figure while the RAM metadata
is being rebuilt and is not known yet. `plain(result)` is the JSON the CLI prints with --json:
`dataclasses.asdict`, so the keys are the field names below.

Units: sizes in bytes, times in seconds since the epoch, durations in seconds, unless a field's
name says otherwise (`latency_ms`, `*_blocks`, `*_slots`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any


@dataclass(frozen=True)
class VMStats:
    """One VM's figures."""

    name: str
    """Its name: 1-64 letters, digits, '.', '_' or '-'."""
    size: int
    """The virtual disk's size, bytes."""
    logical_bytes: int
    """Bytes that read as data (neither zeros nor never written) through the VM's chain, at most
    its size (a last block past its end counts only its part inside)."""
    logical_blocks: int
    """Its blocks that read as data (the last one whole)."""
    unique_blocks: int | None
    """Blocks only this VM references: written by it and shared with nothing, each counted once
    however many of its LBNs hold it (what deleting it frees). None while the RAM metadata is
    rebuilt."""
    shared_blocks: int | None
    """Its LBNs that read a block another VM or layer may read too: logical_blocks less the
    LBNs holding its unique blocks."""
    depth: int
    """Layers in the VM's chain, its own writable top included."""
    origin: str | None
    """The VM it was cloned from; None for an imported or created VM."""
    created: float
    """When the VM was made, seconds since the epoch."""
    snapshots: int = 0
    """Its snapshots (named frozen states it can be rolled back to)."""


@dataclass(frozen=True)
class VMSnapshot:
    """A VM's snapshot: a frozen state with a name, O(1) to take and to roll back to."""

    vm: str
    """The VM it belongs to."""
    name: str
    """Its name, unique within the VM."""
    created: float
    """When it was taken, seconds since the epoch."""
    size: int
    """The VM's size then, bytes (a rollback restores it)."""
    origin: str | None
    """The golden image the VM was cloned from then."""
    blocks_alone: int | None
    """Blocks it holds alone: referenced once, by the snapshot's own layer, and read by no VM
    now (what removing it may free). None while the RAM metadata is rebuilt."""


@dataclass(frozen=True)
class VMInfo:
    """Everything about one VM: its figures, its golden image, clones, snapshots and clients."""

    stats: VMStats
    """Its figures: size, logical bytes, own and shared blocks, chain depth, origin."""
    clones: list[str]
    """The VMs cloned from it (or rebased onto it), by name."""
    snapshots: list[VMSnapshot]
    """Its snapshots, oldest first."""
    attached: list[str]
    """The NBD clients attached to it (HOST:PORT each); [] when no service runs."""
    refreshable: bool
    """It keeps the golden state it was cloned from: `vm refresh` brings it back there."""
    base_size: int | None = None
    """Bytes: the size of that golden state, which a refresh gives it back; None: not
    refreshable, or cloned before Blockfold kept it (a refresh keeps its size)."""


@dataclass(frozen=True)
class NodeStatus:
    """One node's health, as the coordinator sees it. An embedded pool reports itself as one node
    named "local", always up, at its directory."""

    name: str
    """The node's name in the cluster ("node1", …); "local" for an embedded pool."""
    address: str
    """HOST:PORT of a cluster node; the pool directory of an embedded pool."""
    state: str
    """"up", "suspect" (missed a heartbeat), "down" or "returning" (back, being caught up)."""
    latency_ms: float | None
    """Round trip of the node's last heartbeat, milliseconds; None for a node that is down and
    for an embedded pool."""
    capacity_bytes: int | None
    """Room for new blocks on it, bytes (its last heartbeat): the free space of the filesystem
    it keeps its blocks on (shared with any node on the same one), a RAM node's unused memory;
    an embedded pool's PoolStats.capacity_bytes. None for a node that is down (not known)."""
    blocks: int | None
    """Blocks it stores by its own count: a node's last heartbeat, an embedded pool's live slots
    (None while rebuilt, and for a node that is down: not known)."""
    live_blocks: int | None
    """Live blocks the coordinator knows it holds a copy of (None while rebuilt, and while the
    coordinator is fenced: it would count its state, older than the newer writer's commits)."""
    under_replicated: int | None
    """Of those, how many have fewer than `replicas` copies on nodes that are up (None while the
    coordinator is fenced)."""
    weight: float | None
    """The node's weight in placement (rendezvous hashing); None for an embedded pool."""
    catalog_version: int | None
    """The catalog version its replica holds; None for an embedded pool (one catalog)."""
    last_seen: float | None
    """When it last answered, seconds since the epoch (0: never); None for an embedded pool."""
    error: str
    """Why the node is down; empty when it is not."""
    registered: bool | None = None
    """Whether etcd holds the node's liveness key (its lease kept alive by the node: it runs);
    None for a cluster without etcd, for an embedded pool, and when etcd cannot be read."""


@dataclass(frozen=True)
class EtcdStatus:
    """A cluster's etcd, as read from it (engine.etcd): where it is, whether it answers, and the
    nodes and writers registered in it."""

    endpoints: list[str]
    """Its client URLs (cluster.json), http://HOST:PORT."""
    healthy: bool
    """It answered and has a leader."""
    members: int | None
    """Its members (1 for a local cluster's own); None when it does not answer."""
    error: str
    """Why it is not healthy; empty when it is."""
    registered: list[str]
    """The nodes whose liveness key it holds, by their names in the cluster (one that is not
    in cluster.json by its own name)."""
    writers: list[str]
    """The writable coordinators with a session in it (CLI, console, service): their holder
    names ("HOST pid N (hex)", engine.cluster.holder), oldest first."""


@dataclass(frozen=True)
class RebuildRecord:
    """One row of the rebuild history (the catalog's `rebuilds` table)."""

    ts: float
    """When it finished, seconds since the epoch."""
    reason: str
    """"open", "crash" (the last close was not clean), "requested", "rollback" or "repair"."""
    mode: str
    """"fast" (stored fingerprints) or "full" (every block re-read and re-hashed)."""
    seconds: float
    """How long it took."""
    blocks: int
    """Live blocks found."""
    bytes: int
    """Their bytes: blocks × block size."""
    corrupt: int
    """Blocks whose bytes no longer match their fingerprint (full mode only)."""
    orphans: int
    """Unreferenced blocks reclaimed (left by a crash mid-write)."""


@dataclass(frozen=True)
class PoolStats:
    """Pool-wide figures, with every VM's and every node's."""

    path: str
    """The pool or cluster directory."""
    block_size: int
    """Bytes per block, fixed when the pool was made."""
    state: str
    """"ready", or "rebuilding" while the RAM metadata is rebuilt (block figures are None then)."""
    logical_bytes: int
    """Bytes that read as data, summed over every VM (what the VMs would take without dedup)."""
    physical_bytes: int | None
    """Bytes of unique blocks stored (one copy each): unique_blocks × block size."""
    dedup_ratio: float | None
    """Logical over physical, to 3 decimals, both in blocks (a VM's last block, read in part,
    is stored whole); 1.0 for an empty pool."""
    unique_blocks: int | None
    """Live blocks: each distinct block stored once, however many references it has."""
    free_slots: int | None
    """Slots in the slot files ready for new blocks; None for a cluster (each node keeps its own
    free space)."""
    capacity_bytes: int | None
    """Room for new blocks, bytes: an embedded pool's free slots plus what its slot files may
    still grow by on their filesystem (the slop and the catalog's room kept); a cluster's free
    space on the nodes that are up, each filesystem counted once however many nodes share it (a
    RAM node: its unused memory), for block copies, so not divided by R. None while the RAM
    metadata is rebuilt."""
    usable_bytes: int | None
    """Room for new unique blocks, bytes: capacity_bytes / R (each block takes R copies);
    capacity_bytes itself for an embedded pool."""
    collisions: int | None
    """Blocks whose fingerprint matched another block with different bytes (stored apart)."""
    corrupt_blocks: int | None
    """Live blocks known to have no sound copy (their bytes no longer match; found by a full
    rebuild, a scrub, fsck or a read): reads of them fail."""
    refcount_histogram: dict[str, int] | None
    """Live blocks by refcount (layer references), in power-of-two buckets: {"1": n, "2": n,
    "3-4": n, …}."""
    readers_histogram: dict[str, int] | None
    """Live blocks by how many VMs read them (BlockRow.readers), in the same buckets: how shared
    the blocks are, as operators mean it."""
    metadata_ram_bytes: int | None
    """RAM taken by the dedup metadata (fingerprint index, refcounts, free space, replica map)."""
    metadata_ram_bytes_per_block: float | None
    """metadata_ram_bytes / unique_blocks, bytes; 0 for an empty pool."""
    replicas: int
    """Copies kept of every block (R); 1 for an embedded pool."""
    min_replicas: int
    """Fewest copies a write accepts before it is refused; 1 for an embedded pool."""
    under_replicated_blocks: int | None
    """Live blocks with fewer than `replicas` copies on up nodes (0 for an embedded pool)."""
    lost_blocks: int | None
    """Live blocks no node holds a copy of, up or not: their copies were lost (nodes restarted
    without them); reads of them fail saying so. 0 for an embedded pool."""
    repaired_copies: int | None
    """Rotten copies rewritten from a sound replica (read repair and scrub) since the
    coordinator opened; None for an embedded pool (one copy: nothing to repair from)."""
    rebuilds: list[RebuildRecord]
    """The most recent rebuilds, newest first (at most 5)."""
    vms: list[VMStats]
    """Every VM, by name."""
    nodes: list[NodeStatus]
    """Every node, in the cluster's order (an embedded pool: itself)."""
    snapshots: int = 0
    """Snapshots, over every VM."""
    snapshot_blocks: int | None = None
    """Blocks that only snapshots hold (VMSnapshot.blocks_alone, summed): what removing every
    snapshot may free. None while the RAM metadata is rebuilt."""
    etcd: EtcdStatus | None = None
    """A cluster's etcd; None for an embedded pool and a cluster without etcd."""
    reserve_bytes: int | None = None
    """Disk an embedded pool holds back for its catalog (DIR/reserve, engine/reserve.py); 0 when
    it has none (its filesystem was too full to keep it: a commit at 100 % may fail). None for
    a cluster."""
    damage: str | None = None
    """What refuses every write and structural edit, in one line naming the slot file and what to
    do (a truncated or deleted one, or a page of it that could not be read since the open), or
    None."""
    fenced: str = ""
    """Empty, or why this cluster's writer writes nothing now: a newer writer took the cluster
    while it was cut off, and it waits to take it back (engine/cluster/admin.py), in one line:
    "fenced: a newer writer has cluster C (HOST pid N); waiting to take it back". A standby
    service (`serve -c --standby`) that waits for another's lease to run out says so the same
    way: "standby: cluster C is held by HOST pid N (…); taking it over when its lease runs
    out". The word before the colon is the state."""


@dataclass(frozen=True)
class Event:
    """One entry of the event log: who did what."""

    id: int
    """Increases with every event."""
    ts: float
    """When, seconds since the epoch."""
    actor: str
    """Who: "cli", "console", "engine", or the comment of the SSH key that acted."""
    kind: str
    """What: "import", "clone", "delete", "rebuild", …"""
    message: str
    """One line, for people."""


@dataclass(frozen=True)
class Snapshot:
    """Everything a console shows, from one call: the figures (with VMs and nodes) and the newest
    events."""

    stats: PoolStats
    """The figures, with every VM's and node's."""
    events: list[Event]
    """Newest first."""

    @property
    def vms(self) -> list[VMStats]:
        return self.stats.vms

    @property
    def nodes(self) -> list[NodeStatus]:
        return self.stats.nodes


@dataclass(frozen=True)
class BlockRow:
    """One physical block."""

    pbn: int
    """Its address: an embedded pool's slot number, a cluster's 64-bit block id."""
    fingerprint: str
    """Its xxh3-128 fingerprint, 32 hex digits (a cluster: block id, then the second hash word)."""
    readers: int
    """How many VMs read it: those whose chain reaches a layer holding it, at an LBN nothing above
    in their chain shadows (a golden's block read by 51 clones through one frozen layer: 52).
    What `Admin.blocks`' min_refs/max_refs filter on and the readers histogram counts."""
    refcount: int
    """References to it from the block tables (one per layer entry, however many VMs read
    through that layer): what keeps the block stored."""
    vms: list[str]
    """The VMs that read it, by name (at most 1000; `readers` counts them all)."""
    nodes: list[str] | None
    """The cluster nodes holding a copy of it, in the cluster's order; None for an embedded pool
    (its one copy is in the pool's own slot files)."""


@dataclass(frozen=True)
class BlockPage:
    """A page of the block table, in address order."""

    total: int
    """Blocks that pass the filters, on every page."""
    offset: int
    """Rows skipped before this page."""
    rows: list[BlockRow]
    """At most the limit asked for."""


@dataclass(frozen=True)
class RebuildFigures:
    """What one rebuild of the RAM metadata found and did."""

    mode: str
    """"fast" (stored fingerprints) or "full" (every block re-read and re-hashed)."""
    reason: str
    """"open", "crash" (the last close was not clean), "requested", "rollback" or "repair"."""
    seconds: float
    """How long it took."""
    pages: int
    """Block-table pages read."""
    references: int
    """Block references counted in them."""
    blocks: int
    """Live blocks found."""
    bytes: int
    """Their bytes: blocks × block size."""
    bytes_per_s: int
    """bytes / seconds."""
    corrupt_blocks: list[int]
    """Addresses of blocks whose bytes no longer match their fingerprint (full mode only); in a
    cluster, those with no sound copy left on any reachable node (a rotten copy with a sound
    replica is rewritten: repaired_copies)."""
    bad_references: int | None
    """References past the end of the data file; None for a cluster (no data file)."""
    orphans_reclaimed: int
    """Blocks nothing references any more (left by a crash mid-write), now reclaimed."""
    missing_blocks: int | None
    """Referenced blocks no reachable node holds; None for an embedded pool (see
    bad_references)."""
    free_slots: int | None
    """Free slots after the rebuild; None for a cluster (each node keeps its own)."""
    capacity_slots: int | None
    """Slots in the slot files; None for a cluster."""
    damage: str | None = None
    """What makes writing unsafe (a truncated or deleted slot file, in one line naming it and
    what to do), or None: every write is refused until `rebuild --full --repair`."""
    repaired_copies: int | None = None
    """A cluster's full rebuild: rotten copies rewritten from a sound replica on another node
    (also counted in PoolStats.repaired_copies and logged as `repair` events); None for an
    embedded pool (one copy of each block) and for a fast rebuild (no copy is re-read)."""


@dataclass(frozen=True)
class Problem:
    """One broken promise that fsck found, and where: the fields that do not locate it are None."""

    kind: str
    """"layer", "reference", "refcount", "space", "corrupt", "damage", "replica", "missing",
    "lost" (no copy left on any node, or a commit refused for it) or "replication"."""
    message: str
    """One line, for people."""
    pbn: int | None = None
    """The block's address (see BlockRow.pbn)."""
    vm: str | None = None
    """The VM's name."""
    layer: int | None = None
    """The block-table layer's id."""
    node: str | None = None
    """The node's name."""


@dataclass(frozen=True)
class WriteQuorum:
    """Whether writes would go on without one node (Admin.writes_without): every catalog
    change must reach `need` nodes, and `left` would answer."""

    nodes: int
    """Nodes in the cluster."""
    left: int
    """Nodes that would still answer: those not down, but the one left out."""
    need: int
    """Nodes a catalog change must reach: a majority of `nodes`, and at least min_replicas."""

    @property
    def refused(self) -> bool:
        """True if too few would be left: every write (and event) would be refused."""
        return self.left < self.need


@dataclass(frozen=True)
class NodeRemoval:
    """What removing a node costs (Admin.removal) or did (Admin.remove_node): its blocks are
    copied to the other nodes until every live block has R copies without it."""

    node: str
    """The node's name."""
    state: str
    """Its state as the coordinator saw it (NodeStatus.state's words)."""
    blocks: int
    """Live blocks it holds, as the coordinator knows (0 for a node down since it opened)."""
    short: int
    """Live blocks with fewer than R copies on the up nodes but it: what the drain copies."""
    lost: int
    """Live blocks no up node but it holds while it is down: lost if it is removed anyway
    (--force); 0 for an up node, which gives them away."""
    nodes_left: int
    """Nodes in the cluster once it is gone."""
    need: int
    """Nodes a catalog change must reach once it is gone: a majority of `nodes_left`, and at
    least min_replicas."""
    block_size: int
    """The cluster's block size, bytes: `blocks` × it is what the node's blocks weigh."""
    copied: int = 0
    """Copies the drain made (remove_node; 0 from removal)."""
    drained: bool = False
    """The catalog records it removed: always once remove_node returns; from removal, a
    removal cut short after its drain, which remove_node finishes without copying."""
    address: str = ""
    """Where it listened (HOST:PORT): a node that runs elsewhere is to be stopped there."""
    local: bool = False
    """A node of this host (its process stopped by remove_node)."""
    data: str | None = None
    """Its data directory, kept and marked removed (remove_node; None: none here, or
    deleted)."""
    deleted: bool = False
    """Its data directory was deleted (remove_node with delete_data)."""


@dataclass(frozen=True)
class HealFigures:
    """What a heal did: a heal that waits sums its passes' copies, relays and drops, and says
    what its last pass left unreachable and under-replicated."""

    copied: int
    """Block copies made onto the nodes placement wants them on."""
    relayed: int
    """Of those, copies made through the coordinator (read from a holder, written to the
    target) because a copy from node to node could not be made."""
    relayed_why: str
    """Why they were relayed, one line ("" if none were)."""
    unreachable: int
    """Blocks that needed a copy but have none on a reachable node."""
    dropped: int
    """Copies beyond R dropped from nodes that are not among a block's targets."""
    under_replicated: int
    """Live blocks still short of R copies on up nodes afterwards."""


@dataclass(frozen=True)
class ScrubFigures:
    """What one scrub did."""

    blocks: int
    """Live blocks verified (from where the last scrub stopped)."""
    bytes: int
    """Their bytes: blocks × block size."""
    corrupt: list[int]
    """Addresses of the blocks found rotten (see BlockRow.pbn); in a cluster, those with no
    sound copy left on any reachable node."""
    seconds: float
    """How long it took."""
    bytes_per_s: int
    """bytes / seconds."""
    finished: bool
    """True if it reached the last live block (the next scrub starts over); False if it was
    cancelled (the next one resumes here)."""
    repaired: int | None = None
    """Rotten copies rewritten from a sound replica (a cluster); None for an embedded pool,
    whose only copy cannot be repaired. In a cluster `blocks` counts copies read, on every
    node."""


@dataclass(frozen=True)
class Job:
    """A long call that a service runs (an import, a rebuild, a scrub …): for the client that
    asked, or in the background."""

    id: int
    """Increases with every job of this service."""
    kind: str
    """The Admin method: "import_image", "export", "rebuild", "fsck", "heal" or "scrub"."""
    actor: str
    """Who started it (see Event.actor)."""
    started: float
    """When, seconds since the epoch."""
    state: str
    """"running", "done", "failed" or "cancelled"."""
    phase: str
    """The phase of its last progress report ("" before the first)."""
    done: int
    """Work done in that phase (bytes or blocks, as the phase reports)."""
    total: int
    """The phase's whole work, in the same unit; 0 while not known (a stream's bytes)."""
    bytes_per_s: float
    """Its rate in the last report, bytes a second."""
    message: str
    """Why it failed, or why it was cancelled when the service stopped it; empty otherwise."""
    vm: str = ""
    """The VM it works on: the one an import makes, an export reads or a write changes, the
    source of a clone; "" for work on the whole pool (rebuild, fsck, scrub, heal)."""


@dataclass(frozen=True)
class ImportResult:
    """The VM an import made."""

    name: str
    """Its name."""
    size: int
    """Its size, bytes: the image's."""


@dataclass(frozen=True)
class ImageEstimate:
    """What importing one image would add (after the images before it in the estimate)."""

    image: str
    """The image's path ("stdin" for -)."""
    size: int
    """The disk's size, bytes."""
    data_blocks: int
    """Its blocks that hold data (not all zeros): its logical blocks once imported."""
    known_blocks: int
    """Of those, blocks the pool holds already."""
    new_blocks: int
    """Blocks it would add to the pool: new to the pool and to the images before it."""


@dataclass(frozen=True)
class Estimate:
    """A dedup estimate before import: what the pool would hold with the images in it."""

    block_size: int
    """The pool's block size, bytes: the estimate's unit."""
    images: list[ImageEstimate]
    """Each image, in the order given."""
    pool_logical_blocks: int
    """The pool's logical blocks now."""
    pool_unique_blocks: int
    """The pool's unique (stored) blocks now."""
    pool_dedup_ratio: float | None
    """The pool's dedup ratio now."""
    new_blocks: int
    """Blocks the images would add, all together."""
    logical_blocks: int
    """The pool's logical blocks with the images imported."""
    unique_blocks: int
    """The pool's unique blocks with the images imported."""
    dedup_ratio: float
    """logical_blocks / unique_blocks, to 3 decimals (as `stats` computes it)."""


def plain(value: Any) -> Any:
    """Results, and lists and dicts of them, as JSON-able data: each dataclass becomes the dict of
    its fields."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Extent:
    """A run of a VM's bytes in one allocation state: what NBD's `base:allocation` reports."""

    length: int
    """Bytes."""
    hole: bool
    """True: no block behind it, so it reads as zeros (and writing it takes space); False: data."""
