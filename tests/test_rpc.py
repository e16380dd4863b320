"""The RPC framing (engine/net/rpc.py): what each end writes, the other reads back exactly, and
every malformed header or body is refused with the right kind of error."""

from __future__ import annotations

import itertools
import json
import struct

import pytest
from hypothesis import given, strategies as st

from engine.net import rpc

KINDS = st.sampled_from(sorted(rpc.REQUESTS | {rpc.REPLY, rpc.ERROR}))
IDS = st.integers(0, 2**32 - 1)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)
HEADERS = st.dictionaries(st.text(max_size=8), JSON, max_size=5)
PAYLOADS = st.binary(max_size=300)


def frame(kind=rpc.HELLO, request_id=1, header=None, payload=b""):
    return rpc.encode(kind, request_id, header, payload)


def body_of(raw: bytes) -> bytes:
    return raw[rpc.HEADER.size:]


@given(kind=KINDS, request_id=IDS, header=HEADERS, payload=PAYLOADS)
def test_a_frame_reads_back_as_written(kind, request_id, header, payload):
    raw = rpc.encode(kind, request_id, header, payload)
    assert rpc.parse_header(raw[:rpc.HEADER.size]) == (kind, request_id,
                                                       len(raw) - rpc.HEADER.size)
    got_header, got_payload = rpc.parse_body(body_of(raw))
    assert got_header == header and bytes(got_payload) == payload


def test_no_header_is_an_empty_object():
    assert rpc.parse_body(body_of(frame(header=None)))[0] == {}


def test_a_body_over_the_cap_is_never_written(monkeypatch):
    monkeypatch.setattr(rpc, "MAX_BODY", 100)
    overhead = len(body_of(frame(header={})))                    # the u32 and "{}"
    frame(payload=b"x" * (100 - overhead))                         # exactly at the cap
    with pytest.raises(ValueError, match="over the 100 cap"):
        frame(payload=b"x" * (101 - overhead))


@pytest.mark.parametrize("raw, message", [
    (struct.pack("!4sBBxxII", b"BFRQ", 1, rpc.HELLO, 1, 10), "bad frame magic"),
    (struct.pack("!4sBBxxII", b"\0\0\0\0", 1, rpc.HELLO, 1, 10), "bad frame magic"),
    (struct.pack("!4sBBxxII", b"BFRP", 0, rpc.HELLO, 1, 10), "unsupported RPC version 0"),
    (struct.pack("!4sBBxxII", b"BFRP", 2, rpc.HELLO, 1, 10), "unsupported RPC version 2"),
    (struct.pack("!4sBBxxII", b"BFRP", 1, rpc.HELLO, 1, rpc.MAX_BODY + 1), "over the"),
    (struct.pack("!4sBBxxII", b"BFRP", 1, rpc.HELLO, 1, 2**32 - 1), "over the"),
])
def test_a_header_that_cannot_be_trusted_is_fatal(raw, message):
    with pytest.raises(rpc.FrameError, match=message) as e:
        rpc.parse_header(raw)
    assert e.value.fatal


def test_a_header_at_the_cap_and_of_any_type_passes():
    # An unknown type is the handler's to refuse (with an error reply): framing lets it through.
    raw = struct.pack("!4sBBxxII", b"BFRP", 1, 255, 9, rpc.MAX_BODY)
    assert rpc.parse_header(raw) == (255, 9, rpc.MAX_BODY)


def _body(meta: bytes, payload: bytes = b"", length: int | None = None) -> bytes:
    return rpc.BODY_HEADER.pack(len(meta) if length is None else length) + meta + payload


@pytest.mark.parametrize("body, message", [
    (b"", "too short"),
    (b"\0", "too short"),
    (b"\0\0\0", "too short"),
    (_body(b"{}", length=3), "runs past the body"),
    (_body(b"", length=2**32 - 1), "runs past the body"),
    (_body(b""), "not JSON"),
    (_body(b"{"), "not JSON"),
    (_body(b"\xff\xfe{}"), "not JSON"),
    (_body(b"[" * 100_000), "not JSON"),                       # nested past the recursion limit
    (_body(b"[]"), "not a JSON object"),
    (_body(b"7"), "not a JSON object"),
    (_body(b'"x"'), "not a JSON object"),
    (_body(b"null"), "not a JSON object"),
])
def test_a_bad_body_is_refused_but_not_fatal(body, message):
    with pytest.raises(rpc.FrameError, match=message) as e:
        rpc.parse_body(body)
    assert not e.value.fatal


def test_the_payload_is_everything_after_the_json():
    header, payload = rpc.parse_body(_body(b'{"n":1}', b"\0" * 8 + b"tail"))
    assert header == {"n": 1} and bytes(payload) == b"\0" * 8 + b"tail"


FRAMES = [frame(rpc.PUT, 1, {"n": 2}, bytes(range(16))), frame(rpc.HELLO, 2),
          frame(rpc.GET, 3, {"n": 0}), frame(rpc.REPLY, 2**32 - 1, {"x": "y"}, b"\xff" * 40)]
STREAM = b"".join(FRAMES)
EXPECTED = [(*rpc.parse_header(f[:rpc.HEADER.size])[:2], body_of(f)) for f in FRAMES]


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_a_stream_split_at_any_byte_gives_the_same_frames(cut):
    reader = rpc.FrameReader()
    got = reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:])
    assert got == EXPECTED


def test_a_stream_fed_a_byte_at_a_time_gives_each_frame_once_complete():
    reader = rpc.FrameReader()
    got = []
    ends = set(itertools.accumulate(len(f) for f in FRAMES))
    for i in range(len(STREAM)):
        out = reader.feed(STREAM[i:i + 1])
        assert len(out) == (1 if i + 1 in ends else 0)
        got += out
    assert got == EXPECTED


@given(st.lists(st.integers(0, len(STREAM)), max_size=6))
def test_a_stream_split_anywhere_many_times_gives_the_same_frames(cuts):
    reader = rpc.FrameReader()
    bounds = [0, *sorted(cuts), len(STREAM)]
    got = []
    for a, b in itertools.pairwise(bounds):
        got += reader.feed(STREAM[a:b])
    assert got == EXPECTED


def test_a_bad_header_in_the_stream_is_fatal_after_the_good_frames_before_it():
    reader = rpc.FrameReader()
    assert reader.feed(FRAMES[0]) == EXPECTED[:1]
    with pytest.raises(rpc.FrameError) as e:
        reader.feed(b"GARBAGE-GARBAGE-GARBAGE")
    assert e.value.fatal


@pytest.mark.parametrize("code", list(rpc.Code))
def test_every_error_code_crosses_the_wire(code):
    raw = rpc.encode_error(42, code, "what went wrong")
    kind, request_id, _ = rpc.parse_header(raw[:rpc.HEADER.size])
    header, payload = rpc.parse_body(body_of(raw))
    error = rpc.RemoteError.from_reply(header)
    assert (kind, request_id, bytes(payload)) == (rpc.ERROR, 42, b"")
    assert error.code is code and str(error) == "what went wrong"
    assert json.loads(json.dumps(header)) == header        # plain JSON: a string, not an object


@pytest.mark.parametrize("header", [{}, {"error": "x"}, {"error": "x", "code": "NO_SUCH_CODE"},
                                    {"error": "x", "code": None}, {"error": "x", "code": [1]}])
def test_an_error_without_a_known_code_is_internal(header):
    assert rpc.RemoteError.from_reply(header).code is rpc.Code.INTERNAL


def test_the_codes_are_a_small_closed_set():
    assert {c.value for c in rpc.Code} == {"BAD_REQUEST", "LEASE_HELD", "LEASE_REQUIRED",
                                           "CATALOG_BEHIND", "STALE_EPOCH", "NODE_FULL",
                                           "IO_ERROR", "NOT_ALLOWED", "INTERNAL"}
