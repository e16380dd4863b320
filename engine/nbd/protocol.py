"""The NBD wire format: magics, option/command/flag numbers, error values and packed structs.

Only what Blockfold's server speaks: fixed newstyle negotiation (with NBD_OPT_INFO/NBD_OPT_GO) and
simple replies in the transmission phase. Every number on the wire is big-endian.
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

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
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
FLAG_CAN_MULTI_CONN = 1 << 8

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1

EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ESHUTDOWN = 108

# The largest READ or WRITE payload served; larger ones get EOVERFLOW. Announced in
# NBD_INFO_BLOCK_SIZE, so well-behaved clients split their requests below it.
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


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def decode_string(data: bytes) -> str:
    """An NBD string (export name): UTF-8, no NUL, at most 4096 bytes; ValueError otherwise."""
    if len(data) > MAX_STRING or b"\0" in data:
        raise ValueError("a name must be at most 4096 bytes, without NUL")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a name must be UTF-8") from None


def parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """NBD_OPT_INFO/NBD_OPT_GO data: the export name and the info types asked for."""
    if len(data) < 6:
        raise ValueError("option data too short")
    (name_length,) = struct.unpack_from(">I", data, 0)
    if len(data) < 4 + name_length + 2:
        raise ValueError("name length runs past the option data")
    name = decode_string(data[4:4 + name_length])
    (count,) = struct.unpack_from(">H", data, 4 + name_length)
    rest = data[4 + name_length + 2:]
    if len(rest) != 2 * count:
        raise ValueError(f"{count} info requests do not fit {len(rest)} bytes")
    return name, list(struct.unpack(f">{count}H", rest))
