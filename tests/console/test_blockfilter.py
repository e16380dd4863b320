"""The Blocks filter language."""

from __future__ import annotations

import pytest

from console.blockfilter import describe, parse_filter


@pytest.mark.parametrize("text,expected", [
    ("", {}),
    ("vm golden", {"vm": "golden"}),
    ("vm=desk-1", {"vm": "desk-1"}),
    ("refs>=2", {"min_refs": 2}),
    ("refs > 2", {"min_refs": 3}),
    ("refs<=5", {"max_refs": 5}),
    ("refs 2-5", {"min_refs": 2, "max_refs": 5}),
    ("refs=3", {"min_refs": 3, "max_refs": 3}),
    ("fp 3FA9", {"prefix": "3fa9"}),
    ("3fa9", {"prefix": "3fa9"}),
    ("vm golden refs>=2 fp ab", {"vm": "golden", "min_refs": 2, "prefix": "ab"}),
])
def test_filters_read_as_engine_arguments(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize("text", ["refs", "golden", "refs>=x", "fp xyz", "refs>2-5", "f" * 33])
def test_bad_filters_say_what_to_write(text):
    with pytest.raises(ValueError, match=r"vm NAME|32 hex"):
        parse_filter(text)


def test_a_filter_reads_back_as_it_was_written():
    for text in ("vm golden refs 2-5 fp ab", "refs>=2", "refs<=4", "refs 3"):
        assert describe(parse_filter(text)) == text
