"""A cluster's VMs over NBD: the same server over the cluster's Admin, block status included."""

from __future__ import annotations

import json

from tests.cluster.conftest import image
from tests.nbdclient import Server, tool


def test_a_clusters_vm_is_served_with_its_holes(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "golden.raw", 2)
    with open(tmp_path / "golden.raw", "r+b") as f:      # and a hole of 1 MiB at the end
        f.truncate(3 << 20)
    data += bytes(1 << 20)
    with cluster.open() as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        admin.clone("golden", "desk")
    s = Server(cluster.path, cluster=True)
    try:
        tool("nbdcopy", s.uri("desk"), tmp_path / "desk.raw")
        assert (tmp_path / "desk.raw").read_bytes() == data
        holes = [(e["offset"], e["length"]) for e in
                 json.loads(tool("nbdinfo", "--map", "--json", s.uri("desk")).stdout)
                 if e["type"] == 3]
        expected = [offset for offset in range(0, len(data), 4096)
                    if not any(data[offset:offset + 4096])]
        assert [o for offset, n in holes for o in range(offset, offset + n, 4096)] == expected
        image(tmp_path / "other.raw", 3, seed=2)
        tool("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", tmp_path / "other.raw",
             s.uri("desk"))
        for vm, source in (("desk", "other.raw"), ("golden", "golden.raw")):
            assert "identical" in tool("qemu-img", "compare", "-f", "raw", "-F", "raw",
                                       tmp_path / source, s.uri(vm)).stdout
    finally:
        s.stop()


def test_a_clusters_export_beside_an_nbd_writer_is_the_vm_at_one_moment(make_cluster, tmp_path):
    from tests.conftest import run_cli
    from tests.test_export_frozen import SIZE, generations, nbd_writer, one_moment
    cluster = make_cluster(nodes=2, replicas=2)
    (tmp_path / "desk.raw").write_bytes(bytes(range(256)) * (SIZE // 256))
    with cluster.open() as admin:
        admin.import_image("desk", str(tmp_path / "desk.raw"))
    s = Server(cluster.path, cluster=True)
    try:
        writer = nbd_writer(s.port)
        assert writer.started.wait(120), "the writer made no two passes"
        proc = run_cli("-c", cluster.path, "vm", "export", "desk", tmp_path / "out.raw")
        writer.end()
        assert proc.returncode == 0, proc.stderr_text
        assert one_moment(generations((tmp_path / "out.raw").read_bytes()))
    finally:
        s.stop()
