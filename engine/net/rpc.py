"""The framed RPC spoken over the `blockfold-rpc` SSH subsystem: what both ends of the wire share.

    frame       := header body
    header      := "BFRP" version:u8 type:u8 pad:u16 request_id:u32 body_length:u32   (big-endian)
    body        := json_length:u32 json payload
    json        := a UTF-8 JSON object of json_length bytes (the request's or reply's fields)
    payload     := the rest of the body: raw bytes (block ids and data, a catalog image)

Replies carry the request's id, so many requests can be in flight on one channel; a node answers
them in order. Every field is checked before anything is trusted: a frame with a bad magic or
version, or a body over MAX_BODY, cannot be resynchronised and closes the channel; an unknown type
or a bad body gets an error reply and the channel goes on.

An ERROR reply's JSON is {"error": one line for a human, "code": a Code}: callers branch on the
code, never on the text.
"""

from __future__ import annotations

import enum
import json
import struct
from collections import deque

MAGIC = b"BFRP"
VERSION = 1
HEADER = struct.Struct("!4sBBxxII")      # magic, version, type, pad, request id, body length
BODY_HEADER = struct.Struct("!I")        # JSON header length
MAX_BODY = 64 << 20
CATALOG_PART = 16 << 20      # catalog images and changesets travel in parts of this size
# Block data one request may have a node gather (a GET's reply, a COPY's copies): ids cost 8
# bytes each, so 64 MiB of one id repeated would ask 32 GiB back. The coordinator asks 8 MiB a
# GET and at most 32 MiB of distinct blocks a COPY (a heal batch).
MAX_GATHER = MAX_BODY // 2

# The SSH channel the frames ride on, which both ends must agree on. AES-GCM runs on the CPU's AES
# instructions: the fastest cipher asyncssh offers. A big window and big packets keep per-packet
# Python work low when megabytes of blocks go by.
SUBSYSTEM = "blockfold-rpc"
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
WINDOW = 16 << 20
# But packets under asyncio's 256 KiB socket read: asyncssh re-copies its input buffer for
# every read that ends mid-packet, which at 192-256 KiB packets made receiving 3 times dearer
# (asyncssh 2.24, one stream of 683 MiB over loopback: the receiver's CPU 0.7-1.1 s at 128 KiB,
# 2.2-2.7 s at 192 or 256 KiB).
PACKET = 128 << 10

# Request types. A reply is REPLY or ERROR with the request's id.
HELLO, PUT, GET, DROP, INVENTORY, SYNC, SCRUB, COPY = 1, 2, 3, 4, 5, 6, 7, 8
CATALOG_VERSION, CATALOG_FETCH, CATALOG_APPLY, CATALOG_INSTALL, CATALOG_PROMISE = 10, 11, 12, 13, 14
LEASE, HEARTBEAT, RELEASE = 20, 21, 22
REPLY, ERROR = 0x80, 0x81
REQUESTS = {HELLO, PUT, GET, DROP, INVENTORY, SYNC, SCRUB, COPY, CATALOG_VERSION,
            CATALOG_FETCH, CATALOG_APPLY, CATALOG_INSTALL, CATALOG_PROMISE, LEASE, HEARTBEAT,
            RELEASE}

# A PUT reply's payload: one status byte per id sent.
STORED, SAME, COLLISION = 0, 1, 2     # new here; already held, same bytes; held, other bytes
# A COPY reply's payload: one status byte per id asked, a PUT status as the target replied, or:
MISSING, ROTTEN, UNSENT = 3, 4, 5     # the holder has no copy; its copy is rotten (not sent);
                                      # the target could not be reached or refused it
# A PUT status for the peer key alone (a node copying to this one): the bytes do not hash to the
# id they came under (engine.blockids), so they were not stored.
MISMATCH = 6

# What a peer key (another node copying to this one) may ask: nothing that drops, leases or
# touches the catalog.
PEER_REQUESTS = {HELLO, PUT}


class Code(enum.StrEnum):
    """Why a node refused a request: the closed set callers branch on."""

    BAD_REQUEST = "BAD_REQUEST"          # a malformed body, header field or payload; unknown type
    LEASE_HELD = "LEASE_HELD"            # another coordinator holds the write lease
    LEASE_REQUIRED = "LEASE_REQUIRED"    # a change needs the write lease, which the caller lacks
    CATALOG_BEHIND = "CATALOG_BEHIND"    # the replica is not at the changeset's base version
    STALE_EPOCH = "STALE_EPOCH"          # the node promised a newer writer's epoch (engine.lineage)
    NODE_FULL = "NODE_FULL"              # no room for more blocks (memory cap or disk)
    IO_ERROR = "IO_ERROR"                # the node's disk failed the request
    NOT_ALLOWED = "NOT_ALLOWED"          # the caller's key may not make this request (a peer)
    INTERNAL = "INTERNAL"                # anything else: a fault in the node


class FrameError(Exception):
    """A frame that cannot be trusted; `fatal` means the stream cannot be resynchronised."""

    def __init__(self, message: str, fatal: bool):
        super().__init__(message)
        self.fatal = fatal
        self.frames: list[tuple[int, int, bytes]] = []   # complete ones before it (feed)


class RemoteError(Exception):
    """The node answered with an error; `code` (a Code) says which kind."""

    def __init__(self, message: str, code: Code = Code.INTERNAL):
        super().__init__(message)
        self.code = code

    @classmethod
    def from_reply(cls, header: dict) -> RemoteError:
        """The error an ERROR reply's header carries; a code this end does not know is
        INTERNAL."""
        try:
            code = Code(header.get("code"))
        except ValueError:
            code = Code.INTERNAL
        return cls(str(header.get("error", "error")), code)


def node_address(text: str) -> tuple[str, int] | None:
    """(host, port) of a node's "HOST:PORT", the port 1-65535; None if it is not one. An IPv6
    address is "[ADDR]:PORT" (its host is then ADDR, as a socket takes it: "[::1]" was looked
    up as a name), or as before ADDR:PORT, its last colon the port's."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "[" in host or "]" in host:
        return None
    if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return None
    return host, int(port)


def encode(kind: int, request_id: int, header: dict | None = None, payload=b"") -> bytes:
    """One frame: `kind` (a request type, REPLY or ERROR, u8), `request_id` (u32), `header` (a
    JSON-able dict) and `payload` (bytes-like). Raises ValueError if the body is over MAX_BODY."""
    return b"".join((encode_head(kind, request_id, header, memoryview(payload).nbytes), payload))


def encode_head(kind: int, request_id: int, header: dict | None, payload_bytes: int) -> bytes:
    """A frame up to its payload, which follows it on the stream: megabytes of blocks are then
    written as they are, not copied into one frame first. Arguments and errors as encode()."""
    meta = json.dumps(header or {}, separators=(",", ":")).encode()
    body_len = BODY_HEADER.size + len(meta) + payload_bytes
    if body_len > MAX_BODY:
        raise ValueError(f"frame body of {body_len} bytes is over the {MAX_BODY} cap")
    return b"".join((HEADER.pack(MAGIC, VERSION, kind, request_id, body_len),
                     BODY_HEADER.pack(len(meta)), meta))


def encode_error(request_id: int, code: Code, message: str) -> bytes:
    """An ERROR reply to request `request_id` (0: to no request in particular)."""
    return encode(ERROR, request_id, {"error": message, "code": code.value})


def parse_header(raw: bytes) -> tuple[int, int, int]:
    """(type, request id, body length) of a frame header."""
    magic, version, kind, request_id, body_len = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError("bad frame magic", fatal=True)
    if version != VERSION:
        raise FrameError(f"unsupported RPC version {version} (this node speaks {VERSION})",
                         fatal=True)
    if body_len > MAX_BODY:
        raise FrameError(f"frame body of {body_len} bytes is over the {MAX_BODY} cap", fatal=True)
    return kind, request_id, body_len


def parse_body(body: bytes) -> tuple[dict, memoryview]:
    """The JSON header (a dict) and the raw payload of a frame body."""
    if len(body) < BODY_HEADER.size:
        raise FrameError("frame body too short", fatal=False)
    (meta_len,) = BODY_HEADER.unpack_from(body)
    end = BODY_HEADER.size + meta_len
    if end > len(body):
        raise FrameError("frame header length runs past the body", fatal=False)
    try:
        header = json.loads(bytes(body[BODY_HEADER.size:end]))
    except (ValueError, RecursionError):       # UnicodeDecodeError is a ValueError
        raise FrameError("frame header is not JSON", fatal=False) from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object", fatal=False)
    return header, memoryview(body)[end:]


class FrameReader:
    """Splits a byte stream into frames: feed() bytes, then take the complete frames. What
    arrives is kept as it came, and a frame's bytes are joined once, when it is complete."""

    def __init__(self):
        self._parts: deque = deque()     # bytes received and not yet framed (or views of them)
        self._have = 0
        self._want: tuple[int, int, int] | None = None

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Complete frames (type, request id, body) in the data so far; raises FrameError,
        whose `frames` are the complete ones that came before the bad header."""
        if data:
            self._parts.append(bytes(data))      # no copy of bytes; a buffer may be reused
            self._have += len(data)
        frames = []
        while True:
            if self._want is None:
                if self._have < HEADER.size:
                    return frames
                try:
                    self._want = parse_header(self._take(HEADER.size))
                except FrameError as e:
                    e.frames = frames
                    raise
            kind, request_id, body_len = self._want
            if self._have < body_len:
                return frames
            body = self._take(body_len)
            self._want = None
            frames.append((kind, request_id, body))

    def _take(self, n: int) -> bytes:
        """The next n bytes received (at most what is held)."""
        out, got = [], 0
        while got < n:
            part = self._parts.popleft()
            if got + len(part) > n:
                rest = memoryview(part)
                self._parts.appendleft(rest[n - got:])
                part = rest[:n - got]
            out.append(part)
            got += len(part)
        self._have -= n
        return out[0] if len(out) == 1 and isinstance(out[0], bytes) else b"".join(out)
