"""A cluster's figures mean what they say: which nodes hold each block, how many VMs read it,
and capacity as room for new copies, each filesystem counted once and not divided by R."""

from __future__ import annotations

import os
import time

from .conftest import image

MiB = 1 << 20


def test_blocks_name_their_holders_and_capacity_counts_each_disk_once(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=3)
    with cluster.open() as admin:
        admin.import_image("golden", str(tmp_path / "a.raw"))
        admin.clone("golden", "desk", count=3)
        page = admin.blocks(limit=1000)
        names = {n.name for n in admin.nodes()}
        assert page.rows and all(len(r.nodes) == 2 and set(r.nodes) <= names for r in page.rows)
        assert {r.readers for r in page.rows} == {4} and {len(r.vms) for r in page.rows} == {4}
        s = admin.stats()
        # the three nodes keep their blocks on one filesystem: its free space, once
        st = os.statvfs(tmp_path)
        free = st.f_bavail * st.f_frsize
        assert abs(s.capacity_bytes - free) < 256 * MiB
        assert s.usable_bytes == s.capacity_bytes // 2
        assert all(abs(n.capacity_bytes - free) < 256 * MiB for n in admin.nodes())


def test_ram_nodes_each_count_their_unused_memory(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2, memory=64 * MiB)
    image(tmp_path / "a.raw", 1, seed=4)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.flush()
        deadline = time.monotonic() + 10
        while True:      # until a heartbeat after the import, and none between the figures
            s = admin.stats()
            stored = sum(n.blocks for n in s.nodes) * admin.block_size
            if ((stored and s.capacity_bytes == 3 * 64 * MiB - stored)
                    or time.monotonic() > deadline):
                break
            time.sleep(0.2)
        assert s.capacity_bytes == sum(n.capacity_bytes for n in s.nodes)
        assert s.capacity_bytes == 3 * 64 * MiB - stored and stored > 0
        assert s.usable_bytes == s.capacity_bytes // 2
