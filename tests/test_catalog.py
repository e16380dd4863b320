"""The sqlite catalog alone: what it stores comes back as it went in."""

from __future__ import annotations

import numpy as np

from engine.catalog import Catalog


def test_the_corrupt_set_keeps_addresses_of_all_64_bits():
    """A cluster's block ids use every bit: those above 2^63 do not fit sqlite's INTEGER as
    they are, and must come back unchanged and in order."""
    catalog = Catalog(None)
    catalog.create_schema(4096)
    ids = np.array([2**64 - 2, 7, 2**63, 2**63 - 1], np.uint64)
    catalog.begin()
    catalog.set_corrupt(ids)
    catalog.commit()
    assert catalog.corrupt_addresses().tolist() == sorted(ids.tolist())
    catalog.begin()
    catalog.set_corrupt(ids[:1])            # the others were released or rewritten
    catalog.commit()
    assert catalog.corrupt_addresses().tolist() == [2**64 - 2]
