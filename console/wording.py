"""Sentences the CLI and the console both say, built in one place so they say the same."""

from __future__ import annotations

from collections.abc import Sequence

from engine.api import NodeRemoval, formats


def listed(names: Sequence[str], readers: int | None = None, most: int = 4) -> str:
    """At most `most` of `names` in natural order, joined with ", " as every list of names a
    message shows, then how many more of `readers` (default: of `names`): "d-1, d-2 +3"."""
    readers = len(names) if readers is None else readers
    names = sorted(names, key=formats.natural_key)
    if readers <= most:
        return ", ".join(names)
    return ", ".join(names[:most]) + f" +{formats.count(readers - most)}"


def delete_question(name: str, clones: Sequence[str], attached: Sequence[str] = ()) -> str:
    """The question before deleting VM `name`: that it is the golden image of `clones` (which
    keep their disks but lose refresh), and, when NBD clients (HOST:PORT each) are `attached`,
    that deleting it cuts them off. Ends with a question mark."""
    said = (f"VM {name} is attached over NBD by {listed(attached)}: deleting it detaches them"
            " and pulls the disk from under them. " if attached else "")
    if clones:
        return said + (f"VM {name} is the golden image of {len(clones)} clone"
                       f"{'s' if len(clones) > 1 else ''} ({listed(clones)}); they keep their"
                       " disks, but can no longer be refreshed to it. Delete it?")
    return said + f"Delete VM {name}? Its own blocks are freed."


def attached_refusal(name: str, attached: Sequence[str]) -> str:
    """The console's refusal to delete VM `name` that NBD clients (HOST:PORT each) attached
    after it asked: what to do, in the console or with the CLI."""
    return (f"VM {name} is attached over NBD by {listed(attached) or 'a client'}: nothing was"
            " deleted. Detach the client first, or press d again to detach and delete it"
            f" (`blockfold vm rm {name} --force` on the command line).")


def removal_question(cluster: str, plan: NodeRemoval) -> str:
    """The question before removing a node (`cluster remove`, the Nodes screen's X): what the
    drain copies, from where, and what is lost. Ends with "first." or "lost."."""
    if plan.drained:
        said = " Its blocks were copied already: it only leaves the cluster."
    elif plan.state == "down":
        said = (f" It is down: the {formats.counted(plan.short, 'block')}"
                f" ({formats.size(plan.short * plan.block_size)}) short of copies without it"
                " will be copied from their other replicas first.")
    else:
        said = (f" Its {formats.counted(plan.blocks, 'block')}"
                f" ({formats.size(plan.blocks * plan.block_size)}) will be copied to the other"
                " nodes first.")
    if plan.lost:
        said += f" {formats.no_copy_left(plan.lost, plan.block_size)}: they are lost."
    return f"Remove {plan.node} from cluster {cluster}?{said}"


def _refresh_size(size: int, base_size: int | None) -> str:
    """What a refresh does to the size of a VM of `size` bytes whose golden state was
    `base_size` bytes (None: a clone made before Blockfold kept it)."""
    exact = formats.exact_size
    if base_size is None:
        return (f"; it keeps its size ({exact(size)}): it was cloned before Blockfold kept its"
                " golden image's size")
    if base_size != size:
        return f", at its size then: {exact(base_size)} (it is {exact(size)} now)"
    return ""


def refresh_question(name: str, golden: str | None, size: int, base_size: int | None) -> str:
    """The question before refreshing VM `name` (`size` bytes) back to `golden`'s state of
    `base_size` bytes (VMInfo.base_size): what is dropped, and the size it comes back at when
    that is not its size now. Ends with a question mark."""
    return (f"Refresh VM {name}? Everything {name} wrote since it was cloned from {golden} (or"
            f" last rebased onto it) is dropped, and it reads as {golden} did then"
            + _refresh_size(size, base_size) + ".")


def refreshed(name: str, golden: str | None, size: int, base_size: int | None) -> str:
    """What a refresh of VM `name` (`size` bytes before it) did: its writes gone, the golden
    state it reads as, and its size when that changed (or could not come back)."""
    return (f"refreshed {name}: its own writes are dropped; it reads as {golden} did when it"
            " was cloned from it (or last rebased onto it)" + _refresh_size(size, base_size))
