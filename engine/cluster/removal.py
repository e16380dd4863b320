"""`blockfold cluster remove` on a cluster opened here: a node taken out of its cluster, drained
first (ClusterAdmin.remove_node; a service runs the same through its Admin).

Phases, each one what the next relies on (a removal cut short is run again, and the record
lets it skip the drain):
  check   refusals with nothing changed: unknown node, fewer nodes left than R or min_replicas
          (lifecycle.check_removable), another removal running or asking (lifecycle.removing,
          taken before the open, whose lease that removal holds, and kept to the end); fewer
          than R other nodes up, a node down holding blocks no other node that answers holds,
          unless forced (ClusterAdmin.removal); then the caller's question
  drain   the node leaves placement, and heal copies every block it holds (or, down, every
          block it held, from the other replicas) until each has R copies without it
  record  one commit, while the write majority is still counted over every node, the leaving
          one included: the removal's event, its id among the removed, placement without it
  leave   the coordinator drops it (our lease on it released; never asked again, and the
          majority counted over the others from here: Members.retire), then cluster.json
          without it, its etcd key revoked, a local node stopped and its data dir marked
          removed, or deleted (lifecycle.leave)
"""

from __future__ import annotations

from collections.abc import Callable

from ..results import NodeRemoval
from . import lifecycle
from .admin import ClusterAdmin
from .config import ClusterConfig


def remove(path, name: str, *, force: bool = False, delete_data: bool = False,
           confirm: Callable[[NodeRemoval], bool] | None = None, progress=None, cancel=None,
           actor: str = "cli") -> NodeRemoval | None:
    """Removes node `name` from the cluster in `path` (the phases above). `confirm(plan)` is
    asked after the checks, before anything changes; False: None is returned, nothing done.
    Raises BlockfoldError (a refusal, with nothing changed; a drain that stalls, with the node
    still in the cluster), CancelledError."""
    config = ClusterConfig.load(path)
    lifecycle.check_removable(config, name)
    with (lifecycle.removing(config, name),
          ClusterAdmin.open(path, actor=actor, finishing=name) as admin):
        plan = admin.removal(name, force)
        if confirm is not None and not confirm(plan):
            return None
        return admin.remove_node(name, force, delete_data, progress, cancel)
