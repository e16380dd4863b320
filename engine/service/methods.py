"""The Admin methods a service answers, and how a CALL becomes one.

Arguments arrive as JSON and are checked against the Admin's own annotations with msgspec, so a
bad argument is a BAD_REQUEST before anything runs; results leave as msgspec JSON (raw bytes for
`read`). The service supplies what cannot travel as JSON: `progress` and `cancel` of the call,
and the bytes that travel in DATA frames (import_image's image, write's data, export's output).
"""

from __future__ import annotations

import inspect
import typing

import msgspec

from ..admin import Admin
from ..errors import RefusedError
from .streams import ExportSink, StreamImage, gather

LOOKS = frozenset({"vm_names", "vm_size", "read", "extents", "vms", "export", "stats", "snapshot",
                   "blocks", "last_rebuild", "fsck", "events", "nodes", "jobs", "clones_of",
                   "vm_info", "snapshots", "known_blocks", "only_copies", "writes_without",
                   "removal"})
"""What a read-only login may call: the methods that only look."""
CHANGES = frozenset({"write", "write_file", "trim", "flush", "import_image", "clone", "delete",
                     "rebuild", "scrub", "start_scrub", "cancel_job", "fail_node", "restore_node",
                     "heal", "refresh", "rebase", "rename", "resize", "take_snapshot", "rollback",
                     "remove_snapshot", "remove_node"})
METHODS = LOOKS | CHANGES
WHILE_FENCED = frozenset({"stats", "snapshot", "events", "jobs", "cancel_job", "nodes"})
"""What a fenced service still answers: its reporting, which says it is fenced, stopping its
jobs, and the nodes' health (`node ls`: what they answer now, without the coordinator's counts
of its state). Everything else would read a state older than the newer writer's commits
(only_copies counts its blocks), or write what cannot be committed."""

SUPPLIED = frozenset({"progress", "cancel"})
"""Parameters the service fills in, as it does those with no annotation (the bytes that travel:
write's data, import_image's and write_file's source, export's dest); a client never names
them."""
STREAMED = {"import_image": {"size": int, "image": str},
            "write_file": {"size": int | None, "image": str}}
"""Arguments a call takes besides its method's: the size (None: a stream, read to its end) and
name of the source whose bytes the client streams."""


def unless_fenced(admin: Admin, method: str) -> None:
    """Raises RefusedError ("METHOD refused: " and the fenced line) while `admin` is fenced, for
    a method not in WHILE_FENCED. The one check of it: methods.invoke makes it for the socket's
    calls, ServedAdmin for every call of its methods (a console's, in its own process)."""
    fenced = admin.fenced() if method not in WHILE_FENCED else ""
    if fenced:
        raise RefusedError(f"{method} refused: {fenced}")


class BadRequest(Exception):
    """A call the service cannot make: an unknown method, a bad or missing argument."""


def _signature(method: str) -> tuple[dict, dict]:
    fn = getattr(Admin, method)
    params = dict(list(inspect.signature(fn).parameters.items())[1:])     # without self
    return params, typing.get_type_hints(fn)


def arguments(method: str, args) -> dict:
    """The keyword arguments of a call, converted to the annotated types. Raises BadRequest."""
    if method not in METHODS:
        raise BadRequest(f"no method {method!r}")
    if not isinstance(args, dict):
        raise BadRequest("args is not a JSON object")
    params, hints = _signature(method)
    extra = STREAMED.get(method, {})
    kwargs = {}
    for name, value in args.items():
        wanted = extra.get(name) or (hints.get(name) if name not in SUPPLIED else None)
        if wanted is None:
            raise BadRequest(f"{method} takes no argument {name!r}")
        try:
            kwargs[name] = msgspec.convert(value, wanted)
        except msgspec.ValidationError as e:
            raise BadRequest(f"{method}: argument {name}: {e}") from None
    missing = [name for name, p in params.items()
               if p.default is p.empty and name in hints and name not in kwargs]
    missing += [name for name in extra if name not in kwargs]
    if missing:
        raise BadRequest(f"{method} needs {', '.join(missing)}")
    return kwargs


def invoke(admin: Admin, method: str, kwargs: dict, call) -> bytes:
    """Runs Admin.`method` with the checked `kwargs` for `call` (engine.service.session.Call);
    returns the REPLY's payload. Raises RefusedError (a fenced service, for a method not in
    WHILE_FENCED), or what the method raises."""
    unless_fenced(admin, method)    # before a write's bytes are gathered, named as called
    params, hints = _signature(method)
    if "progress" in params:
        kwargs["progress"] = call.progress
    if "cancel" in params:
        kwargs["cancel"] = call.cancel
    if method == "import_image":
        kwargs["source"] = StreamImage(call.inbox, call.cancel, kwargs.pop("size"),
                                       kwargs.pop("image"))
    elif method == "write_file":
        size = kwargs.pop("size")
        kwargs["source"] = StreamImage(call.inbox, call.cancel, size, kwargs.pop("image"),
                                       "write")
    elif method == "write":
        room = admin.vm_size(kwargs["name"]) - kwargs["offset"]
        kwargs["data"] = gather(call.inbox, call.cancel, max(room, 0),
                                f"write to {kwargs['name']}")
    elif method == "export":
        kwargs["dest"] = ExportSink(call.send_data, call.cancel)
    result = getattr(admin, method)(**kwargs)
    if hints["return"] is bytes:
        return result
    return msgspec.json.encode(result)
