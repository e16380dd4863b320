"""engine.formats: one way each kind of figure reads, wherever it is shown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine import formats


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (32 << 20, "32.0 MiB"), (int(99.9 * (1 << 20)), "99.9 MiB"), (512 << 20, "512 MiB"),
    (1023 << 20, "1023 MiB"), (3 << 30, "3.0 GiB"), (5 << 40, "5.0 TiB"), (None, "—"),
])
def test_sizes_are_iec_in_at_most_eight_characters(n, text):
    assert formats.size(n) == text
    assert len(text) <= 8


def test_counts_always_have_thousands_separators():
    assert [formats.count(n) for n in (0, 999, 5560, 24943, 1_234_567, None)] == \
        ["0", "999", "5,560", "24,943", "1,234,567", "—"]


@pytest.mark.parametrize("seconds,text", [
    (0.00015, "0.15 ms"), (0.0032, "3.20 ms"), (0.113, "0.11 s"), (4.24, "4.2 s"), (42.4, "42 s"),
    (60, "1 min"), (200, "3 min 20 s"), (7500, "2 h 5 min"), (7200, "2 h"),
    (3 * 86400 + 4 * 3600, "3 d 4 h"), (None, "—"),
])
def test_durations_read_as_people_say_them(seconds, text):
    assert formats.duration(seconds) == text


def test_rates_latencies_and_ratios():
    assert formats.rate(3 << 30) == "3.0 GiB/s" and formats.rate(None) == "—"
    assert [formats.latency(ms) for ms in (0.43, 12.34, 812.4, None)] == \
        ["0.43 ms", "12.3 ms", "812 ms", "—"]
    assert formats.ratio(4.2) == "4.20x" and formats.ratio(None) == "—"


def test_a_rate_only_for_work_that_took_a_while():
    """5,560 blocks (21.7 MiB) rebuilt in 0.11 s have no rate worth showing."""
    assert formats.rate_over(5560 * 4096, 0.11) is None
    assert formats.rate_over(3 << 30, 1.0) == "3.0 GiB/s"


def test_moments_are_as_short_as_they_can_be_next_to_now():
    now = datetime(2026, 11, 25, 14, 3, 12, tzinfo=UTC).timestamp()
    assert formats.when(now - 30, now, UTC) == "14:02:42"
    assert formats.when(now - 86400, now, UTC) == "Nov 24 14:03"
    assert formats.when(now - 400 * 86400, now, UTC) == "2025-10-21"
    assert formats.when(None, now) == "—"


def test_names_sort_as_people_count():
    names = ["desk-10", "golden", "desk-2", "desk-1", "desk", "desk-1a", "Desk-3"]
    assert sorted(names, key=formats.natural_key) == \
        ["Desk-3", "desk", "desk-1", "desk-1a", "desk-2", "desk-10", "golden"]


@pytest.mark.parametrize("text,n", [("4096", 4096), ("64K", 64 << 10), ("10G", 10 << 30),
                                    ("1.5GiB", 3 << 29), ("512m", 512 << 20)])
def test_sizes_read_back(text, n):
    assert formats.parse_size(text) == n


def test_a_bad_size_says_what_to_write():
    with pytest.raises(ValueError, match="K, M, G or T"):
        formats.parse_size("ten")


def test_a_job_reads_as_what_it_does_to_which_vm():
    assert [formats.job(kind, vm) for kind, vm in (
        ("import_image", "desk3"), ("export", "golden"), ("write", "desk3"),
        ("clone", "golden"), ("rebuild", ""), ("scrub", ""))] == [
        "import of desk3", "export of golden", "write to desk3", "clone of golden", "rebuild",
        "scrub"]
