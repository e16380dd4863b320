"""Option haggling, on the event loop: from the greeting until the client has chosen its export.

Fixed newstyle only. The options served:
- NBD_OPT_GO / NBD_OPT_INFO: size and transmission flags, the name if asked, block sizes;
  NBD_OPT_EXPORT_NAME, the old way in, which cannot be refused (an unknown name drops the socket);
- NBD_OPT_LIST: the VMs;
- NBD_OPT_STRUCTURED_REPLY: READ is then answered by chunks, errors carry a message, and
  NBD_FLAG_SEND_DF is announced;
- NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: one context, `base:allocation`, which
  makes NBD_CMD_BLOCK_STATUS usable (it needs structured replies, and the export it was set for);
- NBD_OPT_ABORT. Anything else (STARTTLS, EXTENDED_HEADERS, ...) gets NBD_REP_ERR_UNSUP.

A malformed option gets NBD_REP_ERR_INVALID and haggling goes on; only what breaks the framing
(a bad magic, unknown client flags, an option over 64 KiB) drops the connection. A client the
server cannot take (out of open files) is only refused (Handshake.refuse).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import BlockfoldError
from . import protocol as p

CONTEXT_ID = 1      # the id of `base:allocation` on every connection that selects it


class ProtocolError(Exception):
    """The client broke the protocol beyond any reply: its connection is dropped."""


class ClientGone(Exception):
    """The client closed its side of the connection."""


@dataclass(slots=True)
class Export:
    name: str
    size: int
    flags: int          # transmission flags


@dataclass(slots=True)
class Session:
    """What negotiation settled, for the transmission phase."""
    export: Export
    structured: bool    # structured replies were negotiated
    context: int        # the id of `base:allocation` if selected for this export, else 0


class Handshake:
    def __init__(self, connection):
        """`connection`: the server's Connection; the handshake receives, sends and hands over
        through it (recv_exactly, send, hand_over)."""
        self.connection = connection
        self.server = connection.server
        self.no_zeroes = False
        self.structured = False
        self.context_export: str | None = None   # the export `base:allocation` was set for
        self.unavailable = ""                    # why the last find() served nothing, if fenced
        self.pending: list[bytes] = []           # replies not sent yet

    async def run(self) -> bool:
        """Haggles until the client is in transmission (True) or gone without it (False).

        Raises ClientGone, ProtocolError, OSError.
        """
        c = self.connection
        await self.greet()
        while True:
            option, data = await self.next_option()
            if option == p.OPT_ABORT:
                self.reply(option, p.REP_ACK)
                await self.send_pending()
                return False
            session = await self.option(option, data)
            if session is not None:
                # The replies so far end with the one that enters transmission: the connection's
                # thread sends them, or, if it cannot be had, the client is refused.
                refusal = c.hand_over(session, b"".join(self.pending))
                if refusal is None:
                    return True
                if option == p.OPT_EXPORT_NAME:
                    return False        # this option has no error reply: drop the connection
                self.pending[-1] = p.option_reply(option, p.REP_ERR_POLICY, refusal.encode())
            await self.send_pending()
            c.answered()

    async def refuse(self, why: str) -> None:
        """Negotiates only to refuse (the server cannot serve this client now): every option gets
        NBD_REP_ERR_POLICY with `why` until the client gives up; NBD_OPT_ABORT is acknowledged,
        and NBD_OPT_EXPORT_NAME, which has no error reply, ends it (the caller closes).

        Raises ClientGone, ProtocolError, OSError.
        """
        await self.greet()
        while True:
            option, _ = await self.next_option()
            if option == p.OPT_EXPORT_NAME:
                return
            if option == p.OPT_ABORT:
                self.reply(option, p.REP_ACK)
                await self.send_pending()
                return
            self.reply(option, p.REP_ERR_POLICY, why)
            await self.send_pending()

    async def greet(self) -> None:
        """Sends the greeting and takes the client's flags."""
        self.pending.append(p.SERVER_GREETING.pack(p.NBDMAGIC, p.IHAVEOPT,
                                                   p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
        await self.send_pending()
        (flags,) = p.CLIENT_FLAGS.unpack(
            await self.connection.recv_exactly(p.CLIENT_FLAGS.size))
        if flags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            raise ProtocolError(f"unknown client flags {flags:#x}")
        if not flags & p.FLAG_C_FIXED_NEWSTYLE:
            raise ProtocolError("the client does not speak fixed newstyle negotiation")
        self.no_zeroes = bool(flags & p.FLAG_C_NO_ZEROES)

    async def next_option(self) -> tuple[int, bytes]:
        """The client's next option and its data."""
        c = self.connection
        magic, option, length = p.OPTION_HEADER.unpack(await c.recv_exactly(p.OPTION_HEADER.size))
        if magic != p.IHAVEOPT:
            raise ProtocolError(f"bad option magic {magic:#x}")
        if length > p.MAX_OPTION_DATA:
            raise ProtocolError(f"option {option} claims {length} bytes of data")
        return option, await c.recv_exactly(length)

    async def option(self, option: int, data: bytes) -> Session | None:
        """Answers one option; returns the session if it enters transmission."""
        if option == p.OPT_EXPORT_NAME:
            return await self.export_name(data)
        if option in (p.OPT_INFO, p.OPT_GO):
            return await self.info(option, data)
        if option == p.OPT_LIST:
            await self.list_exports(data)
        elif option == p.OPT_STRUCTURED_REPLY:
            if data:
                self.reply(option, p.REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
            else:
                self.structured = True
                self.reply(option, p.REP_ACK)
        elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            await self.meta_context(option, data)
        else:
            self.reply(option, p.REP_ERR_UNSUP, f"option {option} is not supported")
        return None

    async def send_pending(self) -> None:
        data, self.pending = b"".join(self.pending), []
        await self.connection.send(data)

    def reply(self, option: int, kind: int, data: bytes | str = b"") -> None:
        self.pending.append(p.option_reply(option, kind,
                                           data.encode() if isinstance(data, str) else data))

    # -- exports --------------------------------------------------------------------------------

    async def find(self, name: str) -> Export | None:
        """The export of VM `name`; None if there is none, or while the Admin is fenced: its
        state is older than a newer writer's commits, so a new client would read stale data
        (`unavailable` then says why; NBD_REP_ERR_UNKNOWN is "the export is not available")."""
        self.unavailable = ""
        admin = self.server.admin
        fenced = admin.fenced()
        if fenced:
            self.unavailable = f"VM {name!r} is not served now: {fenced}"
            return None
        try:
            size = await self.server.call(admin.vm_size, name)
        except BlockfoldError:
            return None
        return Export(name, size, self.server.flags
                      | (p.FLAG_SEND_DF if self.structured else 0))

    def not_found(self, name: str) -> str:
        """Why find() gave no export."""
        return self.unavailable or f"no VM named {name!r}"

    def session(self, export: Export) -> Session:
        return Session(export, self.structured,
                       CONTEXT_ID if self.context_export == export.name else 0)

    async def export_name(self, data: bytes) -> Session:
        try:
            name = p.decode_string(data)
        except ValueError as e:
            raise ProtocolError(f"bad export name: {e}") from None
        export = await self.find(name)
        if export is None:
            raise ProtocolError(self.not_found(name))
        self.pending.append(p.EXPORT_NAME_REPLY.pack(export.size, export.flags)
                            + (b"" if self.no_zeroes else bytes(124)))
        return self.session(export)

    async def list_exports(self, data: bytes) -> None:
        if data:
            self.reply(p.OPT_LIST, p.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            return
        for name in await self.server.call(self.server.admin.vm_names):
            encoded = name.encode()
            self.reply(p.OPT_LIST, p.REP_SERVER, struct.pack(">I", len(encoded)) + encoded)
        self.reply(p.OPT_LIST, p.REP_ACK)

    async def info(self, option: int, data: bytes) -> Session | None:
        try:
            name, wanted = p.parse_info_request(data)
        except ValueError as e:
            self.reply(option, p.REP_ERR_INVALID, str(e))
            return None
        export = await self.find(name)
        if export is None:
            self.reply(option, p.REP_ERR_UNKNOWN, self.not_found(name))
            return None
        self.reply(option, p.REP_INFO, p.INFO_EXPORT_DATA.pack(p.INFO_EXPORT, export.size,
                                                               export.flags))
        if p.INFO_NAME in wanted:
            self.reply(option, p.REP_INFO, struct.pack(">H", p.INFO_NAME) + name.encode())
        # Any alignment works (minimum 1); the pool's block size avoids read-modify-write.
        self.reply(option, p.REP_INFO, p.INFO_BLOCK_SIZE_DATA.pack(
            p.INFO_BLOCK_SIZE, 1, self.server.block_size, p.MAX_PAYLOAD))
        self.reply(option, p.REP_ACK)
        return self.session(export) if option == p.OPT_GO else None

    # -- metadata contexts ----------------------------------------------------------------------

    async def meta_context(self, option: int, data: bytes) -> None:
        """LIST answers which contexts the queries match (id 0); SET selects them, replacing the
        previous selection even when it fails."""
        setting = option == p.OPT_SET_META_CONTEXT
        if setting:
            self.context_export = None
            if not self.structured:
                self.reply(option, p.REP_ERR_INVALID, "negotiate structured replies first")
                return
        try:
            name, queries = p.parse_meta_context_request(data)
            matched = matching_contexts(queries, listing=not setting)
        except ValueError as e:
            self.reply(option, p.REP_ERR_INVALID, str(e))
            return
        if await self.find(name) is None:
            self.reply(option, p.REP_ERR_UNKNOWN, self.not_found(name))
            return
        for context in matched:
            self.reply(option, p.REP_META_CONTEXT,
                       struct.pack(">I", CONTEXT_ID if setting else 0) + context.encode())
        if setting and matched:
            self.context_export = name
        self.reply(option, p.REP_ACK)


def matching_contexts(queries: list[str], listing: bool) -> list[str]:
    """The contexts (only ever `base:allocation`) that queries select. Listing, no query or the
    `base:` wildcard lists it too; setting, no query selects nothing. Queries in other namespaces
    are ignored, as the spec asks. ValueError for a query without a namespace."""
    if listing and not queries:
        return [p.BASE_ALLOCATION]
    for query in queries:
        if ":" not in query:
            raise ValueError(f"query {query!r} has no namespace")
    wanted = {p.BASE_ALLOCATION, "base:"} if listing else {p.BASE_ALLOCATION}
    return [p.BASE_ALLOCATION] if wanted.intersection(queries) else []
