"""The Blocks screen's filter language, read into `Admin.blocks` arguments.

    vm golden          blocks the VM golden reads     (also vm=golden)
    refs>=2            read by at least 2 VMs         (>=, <=, >, <, =)
    refs 2-5           read by 2 to 5 VMs
`refs` counts the VMs reading a block (the VMS column), not its refcount (layer references).
    fp 3fa9 / 3fa9     fingerprints starting with the hex digits
Terms combine: `vm golden refs>=2`.
"""

from __future__ import annotations

import re

TERM = re.compile(r"""\s*(?:
    vm\s*[=:]?\s*(?P<vm>[^\s]+)
  | refs?\s*(?P<op>>=|<=|>|<|=)?\s*(?P<lo>\d+)(?:\s*(?:-|\.\.)\s*(?P<hi>\d+))?
  | (?:fp|prefix)\s*[=:]?\s*(?P<fp>[0-9a-fA-F]+)
  | (?P<bare>[0-9a-fA-F]+)(?=\s|$)
)\s*""", re.VERBOSE)

HINT = "use vm NAME, refs>=N or refs N-M (VMs reading), or fp HEX"


def parse_filter(text: str) -> dict:
    """'vm golden refs 2-5' -> {'vm': 'golden', 'min_refs': 2, 'max_refs': 5}; ValueError if bad."""
    out: dict = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = TERM.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {text[pos:].split()[0]!r}: {HINT}")
        pos = m.end()
        if m["vm"]:
            out["vm"] = m["vm"]
        elif m["lo"]:
            lo, op = int(m["lo"]), m["op"]
            if m["hi"]:
                if op:
                    raise ValueError(f"cannot read {m.group(0).strip()!r}: {HINT}")
                out["min_refs"], out["max_refs"] = lo, int(m["hi"])
            elif op in (None, "="):
                out["min_refs"] = out["max_refs"] = lo
            elif op == ">=":
                out["min_refs"] = lo
            elif op == ">":
                out["min_refs"] = lo + 1
            elif op == "<=":
                out["max_refs"] = lo
            else:
                out["max_refs"] = lo - 1
        else:
            fp = m["fp"] or m["bare"]
            if len(fp) > 32:
                raise ValueError(f"fingerprint prefix {fp!r} is longer than 32 hex digits")
            out["prefix"] = fp.lower()
    return out


def describe(filters: dict) -> str:
    parts = []
    if "vm" in filters:
        parts.append(f"vm {filters['vm']}")
    lo, hi = filters.get("min_refs"), filters.get("max_refs")
    if lo is not None and hi is not None:
        parts.append(f"refs {lo}" if lo == hi else f"refs {lo}-{hi}")
    elif lo is not None:
        parts.append(f"refs>={lo}")
    elif hi is not None:
        parts.append(f"refs<={hi}")
    if "prefix" in filters:
        parts.append(f"fp {filters['prefix']}")
    return " ".join(parts)
