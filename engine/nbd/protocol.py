"""The NBD wire format: magics, option/command/flag numbers, error values and packed structs.

Only what Blockfold's server speaks: fixed newstyle negotiation (NBD_OPT_INFO/NBD_OPT_GO, structured
replies, the `base:allocation` metadata context) and, in the transmission phase, simple replies or
structured reply chunks. Every number on the wire is big-endian.
See https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
"""

from __future__ import annotations

import struct

# -- handshake ---------------------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943            # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054            # "IHAVEOPT": starts every option request
OPTION_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0             # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0           # client flags
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# -- transmission ------------------------------------------------------------------------------

FLAG_HAS_FLAGS = 1 << 0                  # transmission flags (per export)
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7                    # only once structured replies are negotiated
FLAG_CAN_MULTI_CONN = 1 << 8

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2                     # READ: at most one content chunk
CMD_FLAG_REQ_ONE = 1 << 3                # BLOCK_STATUS: one extent, within the request

REPLY_FLAG_DONE = 1 << 0                 # the last chunk of a structured reply

REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

# The one metadata context served, and its descriptor flags.
BASE_ALLOCATION = "base:allocation"
STATE_HOLE = 1 << 0                      # no block behind the extent
STATE_ZERO = 1 << 1                      # the extent reads as zeros

EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ESHUTDOWN = 108

# The largest READ or WRITE payload served; larger ones get EINVAL, as the spec asks for requests
# over the maximum block size. Announced in NBD_INFO_BLOCK_SIZE, so clients split their requests.
MAX_PAYLOAD = 32 << 20
# Option data is at most a name (4096 bytes) and a few info requests; far larger is hostile.
MAX_OPTION_DATA = 64 << 10
MAX_STRING = 4096

# -- packed structs ----------------------------------------------------------------------------

SERVER_GREETING = struct.Struct(">QQH")      # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")        # IHAVEOPT, option, data length
OPTION_REPLY = struct.Struct(">QIII")        # magic, option, reply type, data length
EXPORT_NAME_REPLY = struct.Struct(">QH")     # size, transmission flags (then 124 zeros, maybe)
INFO_EXPORT_DATA = struct.Struct(">HQH")     # INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE_DATA = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, minimum, preferred, maximum
REQUEST = struct.Struct(">IHHQQI")           # magic, command flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")         # magic, error, cookie
CHUNK = struct.Struct(">IHHQI")              # magic, reply flags, reply type, cookie, length
OFFSET = struct.Struct(">Q")                 # OFFSET_DATA: the offset its data starts at
ERROR = struct.Struct(">IH")                 # ERROR: error, message length (message follows)
EXTENT = struct.Struct(">II")                # BLOCK_STATUS descriptor: length, state flags


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk(cookie: int, kind: int, payload: bytes = b"") -> bytes:
    """A structured reply chunk with its payload. Every structured reply Blockfold sends is one
    chunk, so each carries NBD_REPLY_FLAG_DONE."""
    return CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, kind, cookie, len(payload)) + payload


def data_chunk_header(cookie: int, offset: int, length: int) -> bytes:
    """The header of the one OFFSET_DATA chunk that answers a READ; `length` bytes follow."""
    return CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie,
                      OFFSET.size + length) + OFFSET.pack(offset)


def error_chunk(cookie: int, error: int, message: str) -> bytes:
    """An ERROR chunk ending a reply: an NBD error value and one line for a human."""
    text = message.encode()[:MAX_STRING].decode(errors="ignore").encode()   # whole characters
    return chunk(cookie, REPLY_TYPE_ERROR, ERROR.pack(error, len(text)) + text)


def block_status_chunk(cookie: int, context: int, extents: list[tuple[int, int]]) -> bytes:
    """The BLOCK_STATUS chunk ending a reply: (length, state flags) per extent, in order."""
    return chunk(cookie, REPLY_TYPE_BLOCK_STATUS, struct.pack(">I", context) + b"".join(
        EXTENT.pack(length, flags) for length, flags in extents))


def decode_string(data: bytes) -> str:
    """An NBD string (an export name, a query): UTF-8, no NUL, at most 4096 bytes; ValueError
    otherwise."""
    if len(data) > MAX_STRING or b"\0" in data:
        raise ValueError("a name or query must be at most 4096 bytes, without NUL")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a name or query must be UTF-8") from None


def parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """NBD_OPT_INFO/NBD_OPT_GO data: the export name and the info types asked for."""
    name, rest = _length_prefixed(data, "name")
    if len(rest) < 2:
        raise ValueError("option data too short")
    (count,) = struct.unpack_from(">H", rest, 0)
    if len(rest) != 2 + 2 * count:
        raise ValueError(f"{count} info requests do not fit {len(rest) - 2} bytes")
    return name, list(struct.unpack(f">{count}H", rest[2:]))


def parse_meta_context_request(data: bytes) -> tuple[str, list[str]]:
    """NBD_OPT_LIST_META_CONTEXT/NBD_OPT_SET_META_CONTEXT data: the export name and the queries."""
    name, rest = _length_prefixed(data, "export name")
    if len(rest) < 4:
        raise ValueError("option data too short")
    (count,) = struct.unpack_from(">I", rest, 0)
    rest = rest[4:]
    queries = []
    for _ in range(count):
        query, rest = _length_prefixed(rest, "query")
        queries.append(query)
    if rest:
        raise ValueError(f"{len(rest)} bytes after the last of {count} queries")
    return name, queries


def _length_prefixed(data: bytes, what: str) -> tuple[str, bytes]:
    """A 32-bit length, then that many bytes of NBD string; returns it and the rest."""
    if len(data) < 4:
        raise ValueError("option data too short")
    (length,) = struct.unpack_from(">I", data, 0)
    if len(data) < 4 + length:
        raise ValueError(f"{what} length runs past the option data")
    return decode_string(data[4:4 + length]), data[4 + length:]
