"""Disk image formats through the real CLI: qemu-img-made qcow2, vmdk, vhdx and vdi images of a
real ext4 filesystem (mke2fs -d) import as the disk they hold and export byte for byte, raw and
as qcow2 and vmdk (qemu-img compare); a qcow2 over a backing file imports the chain's view; a
truncated image and a container that is not a disk are refused in one line with nothing changed.
Each on a pool the CLI opens itself and through a running service."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli
from tests.serviceproc import Served

FORMATS = ("qcow2", "vmdk", "vhdx", "vdi")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """fs.raw: a 24 MiB ext4 filesystem holding random, repeated and text files; fs.FMT: the
    same disk in each format, made by qemu-img."""
    where = tmp_path_factory.mktemp("images")
    tree = where / "tree"
    tree.mkdir()
    data = os.urandom(3 << 20)
    (tree / "random.bin").write_bytes(data)
    (tree / "copy.bin").write_bytes(data)                       # dedups against random.bin
    (tree / "numbers.txt").write_text("".join(f"{i}\n" for i in range(100000)))
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", tree, "-F", where / "fs.raw", "24M"],
                   check=True, capture_output=True)
    for fmt in FORMATS:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, where / "fs.raw",
                        where / f"fs.{fmt}"], check=True)
    return where


@pytest.fixture(params=["direct", "served"])
def cli(request, pool_dir):
    served = Served(["-p", str(pool_dir)]) if request.param == "served" else None

    def run(*args, check=True, **kw):
        return run_cli("-p", pool_dir, *args, check=check, **kw)
    yield run
    if served is not None:
        assert "Traceback" not in served.stop()


def listing(cli) -> list:
    return [(v["name"], v["size"]) for v in json.loads(cli("vm", "ls", "--json").stdout)]


def test_every_format_round_trips_byte_for_byte(cli, images, tmp_path):
    disk = (images / "fs.raw").read_bytes()
    for fmt in FORMATS:
        out = cli("vm", "import", fmt, images / f"fs.{fmt}", "--json").stdout
        assert json.loads(out) == {"name": fmt, "size": len(disk)}
        cli("vm", "export", fmt, tmp_path / f"{fmt}.raw")
        assert (tmp_path / f"{fmt}.raw").read_bytes() == disk, fmt
    for fmt in ("qcow2", "vmdk"):
        cli("vm", "export", "vdi", tmp_path / f"out.{fmt}", "--format", fmt)
        cli("vm", "export", "vdi", tmp_path / f"named.{fmt}")     # the format from its name
        for out in (tmp_path / f"out.{fmt}", tmp_path / f"named.{fmt}"):
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", out],
                                             capture_output=True, check=True).stdout)
            assert info["format"] == fmt
            subprocess.run(["qemu-img", "compare", "-q", out, images / "fs.raw"], check=True)
    cli("vm", "export", "vdi", tmp_path / "raw.qcow2", "--format", "raw")   # as told
    assert (tmp_path / "raw.qcow2").read_bytes() == disk
    # Four imports of one disk: the pool holds it once.
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["dedup_ratio"] >= 4.0


def test_a_huge_sparse_vm_exports_in_the_time_of_its_data(cli, tmp_path):
    """A VM grown to 15 TiB (under ext4's 16 TiB file limit) past 5 MiB exports, raw and qcow2,
    as its data and holes: the raw file is sparse, both compare equal to the small image (qemu-img
    compare: what lies past its end reads as zeros). The bound is a hang guard, not a speed
    target: the holes are jumped by the pages the VM's layers hold (it took ~5 s a TiB before)."""
    data = os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(1 << 20)
    (tmp_path / "g.raw").write_bytes(data)
    cli("vm", "import", "golden", tmp_path / "g.raw")
    cli("vm", "clone", "golden", "big")
    cli("vm", "resize", "big", "15T")
    for fmt in ("raw", "qcow2"):
        started = time.monotonic()
        cli("vm", "export", "big", tmp_path / f"big.{fmt}", "--format", fmt)
        assert time.monotonic() - started < 60, fmt
        subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt, tmp_path / "g.raw",
                        tmp_path / f"big.{fmt}"], check=True)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                          tmp_path / f"big.{fmt}"], capture_output=True,
                                         check=True).stdout)
        assert info["virtual-size"] == 15 << 40
    assert os.stat(tmp_path / "big.raw").st_blocks * 512 <= 8 << 20     # 4 MiB data, no more


def test_a_raw_export_too_big_for_its_file_system_is_refused_before_the_disk_is_read(
        pool_dir, tmp_path):
    """A file size limit of 1 GiB (RLIMIT_FSIZE, as a file system's own limit: ext4 past 16 TiB)
    under a 15 TiB VM: refused at once in one line, the file that was there left whole, not after
    reading the whole disk."""
    import resource

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))

    (tmp_path / "g.raw").write_bytes(os.urandom(1 << 20))
    run_cli("-p", pool_dir, "vm", "import", "golden", tmp_path / "g.raw", check=True)
    run_cli("-p", pool_dir, "vm", "resize", "golden", "15T", check=True)
    (tmp_path / "out.raw").write_bytes(b"the old image")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "console", "-p", pool_dir, "vm", "export",
                           "golden", tmp_path / "out.raw"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=limited)
    assert time.monotonic() - started < 60         # a hang guard: it used to read 15 TiB first
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"blockfold: error: cannot write {tmp_path / 'out.raw'}: File too large"]
    assert (tmp_path / "out.raw").read_bytes() == b"the old image"
    assert sorted(os.listdir(tmp_path)) == ["g.raw", "out.raw", "pool"]


def test_a_qcow2_over_a_backing_file_imports_the_chain(cli, images, tmp_path):
    shutil.copy(images / "fs.qcow2", tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    tmp_path / "top.qcow2"], check=True)
    patch = 8192
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 7 65536 {patch}",
                    tmp_path / "top.qcow2"], check=True, capture_output=True)
    cli("vm", "import", "chain", tmp_path / "top.qcow2")
    cli("vm", "export", "chain", tmp_path / "chain.raw")
    expected = bytearray((images / "fs.raw").read_bytes())
    expected[65536:65536 + patch] = bytes([7]) * patch
    assert (tmp_path / "chain.raw").read_bytes() == expected


@pytest.mark.parametrize("named", ["relative", "absolute"])
def test_a_qcow2_with_an_external_data_file_imports_its_disk(cli, images, tmp_path, named):
    data = "fs.data" if named == "relative" else str(tmp_path / "fs.data")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={data}",
                    "ext.qcow2", "24M"], cwd=tmp_path, check=True)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2",
                    images / "fs.raw", "ext.qcow2"], cwd=tmp_path, check=True)
    cli("vm", "import", "ext", tmp_path / "ext.qcow2")      # from another working directory
    cli("vm", "export", "ext", tmp_path / "ext.raw")
    assert (tmp_path / "ext.raw").read_bytes() == (images / "fs.raw").read_bytes()
    os.truncate(tmp_path / "fs.data", 1 << 20)      # its tables' offsets are the data file's
    proc = cli("vm", "import", "cut", tmp_path / "ext.qcow2", check=False)
    assert proc.returncode == 1 and f"{tmp_path / 'fs.data'} is truncated" in proc.stderr_text


def test_what_is_not_a_disk_is_refused_in_one_line(cli, images, tmp_path):
    cli("vm", "import", "before", images / "fs.qcow2")
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes((images / "fs.qcow2").read_bytes()[:1 << 20])
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress((images / "fs.raw").read_bytes()[:1 << 20]))
    before = listing(cli)
    cases = [
        ([truncated], "truncated.qcow2 is truncated"),
        ([packed], "starts as a gzip file does"),
        ([images / "fs.vmdk", "--format", "qcow2"], "not an image qemu-img can read"),
        (["-", "--format", "vdi"], "stdin is read as a raw disk"),
    ]
    for args, message in cases:
        proc = cli("vm", "import", "x", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr_text, proc.stderr_text
        assert len(proc.stderr_text.strip().splitlines()) == 1
    proc = cli("vm", "import", "x", "-", check=False, input=packed.read_bytes())
    assert proc.returncode == 1 and "stdin starts as a gzip file does" in proc.stderr_text
    assert listing(cli) == before
    assert cli("fsck").stdout_text.strip() == "clean"
    # Forced, the bytes are taken as they are.
    cli("vm", "import", "packed", packed, "--format", "raw")
    cli("vm", "export", "packed", tmp_path / "packed.out")
    assert (tmp_path / "packed.out").read_bytes() == packed.read_bytes()


def qcow2_tables(path) -> dict:
    """Where a qcow2's tables start (its header, big-endian): the refcount table, the L1
    table and the first L2 table; and its cluster size."""
    head = path.read_bytes()[:72]
    bits, = struct.unpack(">I", head[20:24])
    l1, refcounts = struct.unpack(">QQ", head[40:56])
    l2, = struct.unpack(">Q", path.read_bytes()[l1:l1 + 8])
    return {"refcount": refcounts, "l1": l1, "l2": l2 & ((1 << 56) - 1) & ~511,
            "cluster": 1 << bits}


# Where an interrupted copy of fs.qcow2 ends, as a function of its tables (brk7 6: each one
# imported as a disk of zeros, exit 0). qemu-img check finds nothing wrong with the first two:
# the cut is less than a cluster before the end of what the tables use.
CUTS = {
    "at the L1 table": lambda t: t["l1"],
    "half a cluster before the L1 table": lambda t: t["l1"] - t["cluster"] // 2,
    "between the L1 table and the first L2 table": lambda t: (t["l1"] + t["l2"]) // 2,
    "inside the refcount table": lambda t: t["refcount"] + 512,
}


@pytest.mark.parametrize("cut", CUTS)
def test_a_qcow2_cut_inside_its_tables_is_refused_in_one_line(cli, images, tmp_path, cut):
    image = tmp_path / "cut.qcow2"
    shutil.copy(images / "fs.qcow2", image)
    os.truncate(image, CUTS[cut](qcow2_tables(image)))
    base = tmp_path / "base.qcow2"          # the same cut under a sound top: the base is named
    shutil.copy(image, base)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
                    "qcow2", "top.qcow2"], cwd=tmp_path, check=True)
    for args, name in (([image], image), ([image, "--format", "qcow2"], image),
                       ([tmp_path / "top.qcow2"], base)):
        proc = cli("vm", "import", "x", *args, check=False)
        lines = proc.stderr_text.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr_text
        assert lines[0].startswith(f"blockfold: error: {name} is truncated"), lines
        proc = cli("estimate", *args, check=False)
        assert proc.returncode == 1 and f"{name} is truncated" in proc.stderr_text
    assert listing(cli) == []
    assert cli("fsck").stdout_text.strip() == "clean"


def test_a_qcow2_left_with_stale_refcounts_imports_as_the_disk_it_holds(cli, tmp_path):
    """A VM killed with lazy_refcounts=on leaves refcounts that qemu-img check calls errors
    (exit 2); reads never consult them, so the image imports as it is."""
    image = tmp_path / "lazy.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
                    image, "4M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 7 65536 1M", "-c", "abort", image],
                   capture_output=True)
    assert subprocess.run(["qemu-img", "check", image], capture_output=True).returncode == 2
    cli("vm", "import", "lazy", image)
    cli("vm", "export", "lazy", tmp_path / "lazy.raw")
    expected = bytearray(4 << 20)
    expected[65536:65536 + (1 << 20)] = bytes([7]) * (1 << 20)
    assert (tmp_path / "lazy.raw").read_bytes() == expected


def test_a_block_device_is_a_source(cli, images, tmp_path):
    attach = subprocess.run(["losetup", "--find", "--show", "--read-only", images / "fs.qcow2"],
                            capture_output=True, text=True)
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        cli("vm", "import", "lun", device)       # a qcow2 on a block device, as on a LUN
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    cli("vm", "export", "lun", tmp_path / "lun.raw")
    assert (tmp_path / "lun.raw").read_bytes() == (images / "fs.raw").read_bytes()


def test_an_export_that_fails_half_way_leaves_the_file_that_was_there(cli, images, small_fs):
    """Out of disk half-way (a 1 MiB tmpfs), raw or qcow2: the old image is whole, and no
    temporary file is left beside it."""
    cli("vm", "import", "fs", images / "fs.raw")
    small = small_fs(1)
    good = b"the good image " * 4096
    (small / "fs.img").write_bytes(good)
    for fmt in ("raw", "qcow2"):
        proc = cli("vm", "export", "fs", small / "fs.img", "--format", fmt, check=False)
        assert proc.returncode == 1 and "No space left on device" in proc.stderr_text
        assert len(proc.stderr_text.strip().splitlines()) == 1, proc.stderr_text
        assert (small / "fs.img").read_bytes() == good
        assert os.listdir(small) == ["fs.img"]


def test_an_export_takes_the_old_files_place_and_writes_a_device_in_place(
        cli, images, pool_dir, tmp_path):
    """A file replaced keeps its mode, owner and group; /dev/null, /dev/stdout on a pipe and a
    block device are written in place, every byte (a device's holes are not zeros); a path in
    the pool's own directory is refused, nothing written."""
    cli("vm", "import", "fs", images / "fs.raw")
    disk = (images / "fs.raw").read_bytes()
    out = tmp_path / "fs.img"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    if os.geteuid() == 0:
        os.chown(out, 1234, 5678)
    before = os.stat(out)
    for fmt in ("qcow2", "raw"):
        cli("vm", "export", "fs", out, "--format", fmt)
        after = os.stat(out)
        assert (after.st_mode, after.st_uid, after.st_gid) == (
            before.st_mode, before.st_uid, before.st_gid)
    assert out.read_bytes() == disk
    cli("vm", "export", "fs", "/dev/null")
    piped = cli("vm", "export", "fs", "/dev/stdout")                    # a pipe: the image
    assert piped.stdout == disk and "exported fs" in piped.stderr_text  # alone, the line aside
    lun = tmp_path / "lun"
    lun.write_bytes(b"\xff" * len(disk))
    attach = subprocess.run(["losetup", "--find", "--show", lun], capture_output=True, text=True)
    if attach.returncode == 0:
        try:
            cli("vm", "export", "fs", attach.stdout.strip())
        finally:
            subprocess.run(["losetup", "-d", attach.stdout.strip()], check=True)
        assert lun.read_bytes() == disk
    blocks = (pool_dir / "blocks.dat").read_bytes()
    for inside in (pool_dir / "fs.img", pool_dir / "blocks.dat", pool_dir / ".." / "pool"):
        proc = cli("vm", "export", "fs", inside, check=False)
        assert proc.returncode == 1 and "whose files are the pool's" in proc.stderr_text
        assert len(proc.stderr_text.strip().splitlines()) == 1
    assert not (pool_dir / "fs.img").exists() and (pool_dir / "blocks.dat").read_bytes() == blocks


def test_an_export_through_a_symlink_to_a_pool_file_is_refused(cli, images, pool_dir, tmp_path):
    """A symlink outside the pool's directory to a file in it leads the export there (its target
    is replaced): refused like the file itself, the pool's file left as it was."""
    cli("vm", "import", "fs", images / "fs.raw")
    blocks = (pool_dir / "blocks.dat").read_bytes()
    (tmp_path / "link.raw").symlink_to(pool_dir / "blocks.dat")
    for fmt in ("raw", "qcow2"):
        proc = cli("vm", "export", "fs", tmp_path / "link.raw", "--format", fmt, check=False)
        assert proc.returncode == 1 and "whose files are the pool's" in proc.stderr_text
        assert len(proc.stderr_text.strip().splitlines()) == 1
    assert (pool_dir / "blocks.dat").read_bytes() == blocks
    assert cli("fsck").returncode == 0


def test_a_qcow2_export_into_a_pipe_is_refused_in_one_line(cli, images, tmp_path):
    """qemu-img seeks in what it writes: into a pipe (`/dev/stdout | …`) it said "Could not
    resize file: Invalid argument"."""
    cli("vm", "import", "fs", images / "fs.raw")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for fmt in ("qcow2", "vmdk"):
        proc = cli("vm", "export", "fs", fifo, "--format", fmt, check=False)
        assert proc.returncode == 1, proc.stderr_text
        assert proc.stderr_text == (f"blockfold: error: a {fmt} image cannot be streamed to"
                                    f" {fifo}: give a file\n")


def _signalled_export(pool_dir, out, sig, ignored=()):
    """Runs `vm export big OUT/big.img`, frozen as soon as its temporary file appears (so the
    signal lands half-way), sends it `sig` (with the signals `ignored` ignored, as nohup does)
    and lets it go on: (exit status, stderr)."""
    def ignore():
        for each in ignored:
            signal.signal(each, signal.SIG_IGN)
    proc = subprocess.Popen([sys.executable, "-m", "console", "-p", str(pool_dir), "vm",
                             "export", "big", str(out / "big.img")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ignore)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(out)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGSTOP)
        assert len(os.listdir(out)) == 2, "the export ended before it could be stopped"
        os.kill(proc.pid, sig)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


@pytest.fixture
def big(cli, tmp_path):
    """A 32 MiB VM "big" of random bytes, and an "out" directory holding an old big.img."""
    (tmp_path / "big.raw").write_bytes(os.urandom(32 << 20))
    cli("vm", "import", "big", tmp_path / "big.raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.img").write_bytes(b"old")
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_an_export_stopped_by_a_signal_leaves_no_temporary_file(pool_dir, big, sig):
    """SIGTERM (`timeout`) or SIGHUP (a closed terminal) half-way stops an export as Ctrl-C
    does: the old file as it was, and no .part file beside it (the signal's default end left
    one, as big as the export got)."""
    status, err = _signalled_export(pool_dir, big, sig)
    assert status == 130, err
    assert os.listdir(big) == ["big.img"] and (big / "big.img").read_bytes() == b"old"


def test_an_export_under_nohup_goes_on_after_a_sighup(pool_dir, big, tmp_path):
    """SIGHUP ignored (nohup) stays ignored: the export ends and replaces the old file."""
    status, err = _signalled_export(pool_dir, big, signal.SIGHUP, ignored=[signal.SIGHUP])
    assert status == 0, err
    assert os.listdir(big) == ["big.img"]
    assert (big / "big.img").read_bytes() == (tmp_path / "big.raw").read_bytes()


def _children(pid: int, comm: str) -> list[int]:
    """The pids of `pid`'s children running `comm`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except (OSError, ValueError):
            continue
        name, _, rest = stat.partition(" (")[2].rpartition(") ")
        if name == comm and int(rest.split()[1]) == pid:
            found.append(int(entry))
    return found


def _pending(pid: int) -> int:
    """The signals waiting for process `pid` (its ShdPnd mask)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    return 0


def _wait_gone(pid: int) -> None:
    """Waits (60 s at most) until process `pid` has ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if open(f"/proc/{pid}/stat").read().rpartition(") ")[2].startswith("Z"):
                return
        except OSError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not end")


def test_a_killed_export_takes_its_qemu_img_along_and_the_next_leaves_no_part(
        pool_dir, tmp_path):
    """kill -9 of a qcow2 export through a service while qemu-img converts: qemu-img is told to
    end with it (it went on writing the whole image into a .part file nobody would rename),
    and the next export to that path removes what the killed one left beside it."""
    served = Served(["-p", str(pool_dir)])
    try:
        (tmp_path / "big.raw").write_bytes(os.urandom(64 << 20))
        run_cli("-p", pool_dir, "vm", "import", "big", tmp_path / "big.raw", check=True)
        out = tmp_path / "out"
        out.mkdir()
        (out / "big.qcow2").write_bytes(b"old")
        proc = subprocess.Popen([sys.executable, "-m", "console", "-p", str(pool_dir), "vm",
                                 "export", "big", str(out / "big.qcow2")], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (qemu := _children(proc.pid, "qemu-img")):
                assert proc.poll() is None, "the export ended before qemu-img could be caught"
                assert time.monotonic() < deadline, "qemu-img never started"
                time.sleep(0.001)
            os.kill(qemu[0], signal.SIGSTOP)        # held where it is, whatever the load
            proc.kill()
            proc.wait()
            assert _pending(qemu[0]) & (1 << (signal.SIGTERM - 1)), "qemu-img was not told"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in qemu:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                _wait_gone(pid)
        assert (out / "big.qcow2").read_bytes() == b"old"
        assert len(os.listdir(out)) > 1                 # the killed export's part, and its copy
        run_cli("-p", pool_dir, "vm", "export", "big", out / "big.qcow2", check=True)
        assert os.listdir(out) == ["big.qcow2"]
        subprocess.run(["qemu-img", "compare", "-q", out / "big.qcow2", tmp_path / "big.raw"],
                       check=True)
    finally:
        assert "Traceback" not in served.stop()


def test_an_export_removes_the_parts_a_killed_one_left_never_a_live_ones(tmp_path):
    """What an export killed outright left beside its file (no lock on it) goes at the next
    export to that path; the part of an export still writing it stays, and so do other
    files' parts."""
    from engine.imageio import replacing
    dest = tmp_path / "disk.img"
    dead = tmp_path / ".disk.img.0123abcd.part"
    dead.write_bytes(b"half an image")
    (tmp_path / ".disk.img.0123abcd.part.d").mkdir()        # its raw copy, through a service
    other = tmp_path / ".other.img.0123abcd.part"
    other.write_bytes(b"another file's")
    with replacing(str(dest)) as first:
        assert sorted(os.listdir(tmp_path)) == [os.path.basename(first), other.name]
        with replacing(str(dest)) as second:                # a second export, meanwhile
            assert os.path.exists(first)
            with open(second, "wb") as f:
                f.write(b"second")
        with open(first, "wb") as f:
            f.write(b"first")
    assert sorted(os.listdir(tmp_path)) == [other.name, "disk.img"]
    assert dest.read_bytes() == b"first"
