"""Disk image formats: what an image holds, read as the disk it holds, and written in a format.

In: `qemu-img info --output=json` names the format (its probe reads the image's magic; `--format`
forces one). qcow2, vmdk, vhdx and vdi are read through `qemu-nbd` (read-only, `-f FMT`, on a
private Unix socket in a temporary directory, so a qcow2's backing chain is read as the one disk
it makes, its external data file too) by `nbdcopy`, which asks block status and skips the holes,
and streams the disk's bytes through a pipe: never a temporary copy. Runs of zeros are dropped
here, before they travel. A raw image is read as it is (a file's holes skipped with SEEK_DATA),
from a regular file, a block device (LVM, a LUN) or stdin. An image that qemu-img calls raw but
whose first bytes are another container's magic (a qcow2 qemu-img cannot open, a compressed file,
an OVA) is refused: it would import as the container's bytes, not as a disk. So is a truncated
or damaged image, before anything is read: its tables point past the end of its file (`qemu-img
map`), or are themselves cut off or damaged (`qemu-img check`). The qemu tools run
in the image's directory: qemu finds a relative external data file (`qemu-img create -o
data_file=NAME`, made beside the image) from its working directory, not from the image's.

Out: raw is the VM's bytes (engine.imageio); qcow2 and vmdk are written by `qemu-img convert`
from an NBD export of the VM on a private Unix socket, served from this process over the Admin
the caller has (a pool opened here, or a service's). Either way the image is the VM as it was
when the export began (Pool.frozen), whatever its NBD clients write meanwhile.

Both run where the image file is, the client's side: the file is read and written with the
user's permissions, a client over SSH works on its own files, and a service never starts qemu.
Every qemu tool started here dies with the thread that started it (PR_SET_PDEATHSIG): a CLI
killed outright (kill -9) left qemu-img converting a whole image into a file nobody would rename,
and a persistent qemu-nbd serving forever.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

from . import _native, formats
from .errors import BadImageError, VMNotFoundError
from .imageio import empty_image, not_a_source, open_image, replacing, scratch
from .names import MAX_VM_BYTES, MAX_VM_WHY

IMPORTS = ("qcow2", "vmdk", "vhdx", "vdi", "raw")     # engine.api names them for the CLI
EXPORTS = ("raw", "qcow2", "vmdk")
MAGICS = (    # (offset, bytes, what): first bytes that say "not a raw disk"
    (0, b"QFI\xfb", "qcow2"), (0, b"KDMV", "vmdk"), (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"), (0x40, b"\x7f\x10\xda\xbe", "vdi"), (0, b"conectix", "vhd"),
    (0, b"QED\x00", "qed"), (0, b"LUKS\xba\xbe", "LUKS"), (0, b"\x1f\x8b", "gzip"),
    (0, b"\xfd7zXZ\x00", "xz"), (0, b"\x28\xb5\x2f\xfd", "zstd"), (0, b"BZh", "bzip2"),
    (0, b"PK\x03\x04", "zip"), (257, b"ustar", "tar (an OVA?)"))
HEAD = 512              # bytes enough for every magic above
PIPE_CHUNK = 2 << 20    # bytes read from nbdcopy's pipe at a time
START_TIMEOUT = 30.0    # seconds qemu-nbd may take to listen
_ZEROS = bytes(PIPE_CHUNK)


def open_disk(source, format: str | None = None):
    """The disk an image holds, to import: `source` a path (a file or a block device) or "-"
    (stdin, raw); an image already open is returned as it is. `format` forces one of IMPORTS
    (default: qemu-img's probe). Returns an object with size, name, chunks(n) and close() (see
    engine.imageio.Image). Raises BadImageError (unreadable, empty, an unknown or unsupported
    format, a container's magic in a "raw" image, qemu's tools missing)."""
    if not isinstance(source, str):
        return source
    if format is not None and format not in IMPORTS:
        raise BadImageError(f"unknown format {format!r}: use {', '.join(IMPORTS)}")
    if source == "-":
        if format not in (None, "raw"):
            raise BadImageError(f"stdin is read as a raw disk: give a {format} image as a file")
        image = open_image("-")
        if format is None:
            refuse_container(image.peek(HEAD), "stdin")
        return image
    try:
        mode = os.stat(source).st_mode
    except OSError as e:
        raise BadImageError(f"cannot read image {source}: {e.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise not_a_source(source)
    info = probe(source, format)
    fmt = info["format"]
    if fmt not in IMPORTS:
        raise BadImageError(f"{source} is a {fmt} image: vm import takes "
                            f"{', '.join(IMPORTS)} (--format raw takes its bytes as they are)")
    if fmt != "raw":
        check_ends(source, fmt, info)
        check_tables(source, info)
        return QemuImage(source, fmt, int(info["virtual-size"]))
    image = open_image(source)
    if format is None:
        refuse_container(os.pread(image.fd, HEAD, 0), source)
    return image


def probe(path: str, format: str | None = None) -> dict:
    """qemu-img's view of the image (`qemu-img info --output=json --backing-chain`): the top
    image's, with "images", qemu-img's view of every file of its backing chain, top first, and
    "data", the file that holds each one's data. Raises BadImageError with qemu-img's own
    reason (a damaged image, a backing file missing)."""
    if os.stat(path).st_size == 0 and stat.S_ISREG(os.stat(path).st_mode):
        raise empty_image(path)
    args = ["qemu-img", "info", "--output=json", "--backing-chain", "-U"]
    proc = _run([*args, *(["-f", format] if format else []), path], path)
    if proc.returncode != 0:
        raise BadImageError(f"{path}: not an image qemu-img can read: {_reason(proc.stderr)}")
    chain = json.loads(proc.stdout)
    return dict(chain[0], images=chain, data=[_data_file(entry, path) for entry in chain])


def _data_file(entry: dict, path: str) -> str:
    """The file that holds the data of one image of a chain, as `qemu-img info` describes it:
    its external data file (found as qemu finds it, from the directory of `path`, where the
    tools run), or the image file itself."""
    external = entry.get("format-specific", {}).get("data", {}).get("data-file")
    if external is None:
        return entry["filename"]
    return os.path.join(_beside(path), external)


def check_ends(path: str, fmt: str, info: dict) -> None:
    """Refuses an image whose tables point past the end of its file (a truncated copy): qemu
    would read what is missing as zeros. `qemu-img map` gives each extent's offset in the file
    that holds its data (the image, or its external data file), and its depth in the backing
    chain."""
    proc = _run(["qemu-img", "map", "--output=json", "-U", "-f", fmt, path], path)
    if proc.returncode != 0:
        raise BadImageError(f"{path}: qemu-img cannot map it: {_reason(proc.stderr)}")
    ends: dict[int, int] = {}
    for extent in json.loads(proc.stdout):
        if "offset" in extent and extent.get("data") and not extent.get("compressed"):
            depth = extent.get("depth", 0)
            ends[depth] = max(ends.get(depth, 0), extent["offset"] + extent["length"])
    for depth, end in ends.items():
        name = info["data"][depth] if depth < len(info["data"]) else path
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and end > st.st_size:     # (a device's end is its own)
            raise BadImageError(f"{name} is truncated: its tables point to byte {end}, but it"
                                f" ends at byte {st.st_size}")


def check_tables(path: str, info: dict) -> None:
    """Refuses an image of the chain whose own tables are cut off or damaged, which check_ends
    cannot see: qemu reads a qcow2's L1, L2 or refcount table past the end of its file as
    zeros, so a copy cut inside them imported as a disk of zeros (a vmdk's grain tables, a
    vhdx's BAT and a vdi's block map cut off, qemu refuses to open). Asks `qemu-img check` of
    each image file, which walks every table. Refused: damaged tables (exit 2), a check that
    cannot finish (exit 1), and a qcow2's `image-end-offset` (the end of the last cluster its
    tables use) past the end of the file's last cluster, which qemu-img check lets pass (cut
    at the L1 table's cluster: exit 0); a file may end inside its last cluster (a new qcow2
    ends after its L1 table). Harmless: refcounts that disagree with the tables, leaked
    clusters (exit 3), a format with no check (exit 63)."""
    for image in info["images"]:
        name, fmt, cluster = image["filename"], image["format"], image.get("cluster-size", 1)
        if fmt == "raw":
            continue
        proc = _run(["qemu-img", "check", "--output=json", "-U", "-f", fmt, name], name)
        if proc.returncode == 1:
            raise BadImageError(f"{name}: qemu-img cannot check it: {_reason(proc.stderr)}")
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
        # A refcount that disagrees with the tables ("refcount=0 reference=1": what a VM
        # killed with lazy_refcounts=on leaves) is harmless here: reads never consult them.
        errors = [line.removeprefix("ERROR").lstrip(": ") for line in proc.stderr.splitlines()
                  if line.startswith("ERROR") and "refcount=" not in line]
        if proc.returncode == 2 and errors:
            count = report.get("corruptions", len(errors))
            raise BadImageError(f"{name} is truncated or damaged: qemu-img check finds {count}"
                                f" error{'s' if count != 1 else ''}, the first: {errors[0]}")
        end = report.get("image-end-offset")
        try:
            st = os.stat(name)
        except OSError:
            continue
        if (end is not None and stat.S_ISREG(st.st_mode)       # (a device's end is its own)
                and end > -(-st.st_size // cluster) * cluster):
            raise BadImageError(f"{name} is truncated: its tables use bytes up to {end}"
                                f" (qemu-img check), but it ends at byte {st.st_size}")


def refuse_container(head: bytes, name: str) -> None:
    """Refuses bytes that start as another container does (not a raw disk)."""
    for offset, magic, what in MAGICS:
        if head[offset:offset + len(magic)] == magic:
            raise BadImageError(f"{name} starts as a {what} file does, yet it is not one qemu-img"
                                " can open: refusing to import it as a raw disk (--format raw"
                                " takes its bytes as they are)")


def _listening(path: str) -> bool:
    """Whether a server accepts connections on the Unix socket at `path`. The file appears at
    bind(), before listen(): a client that only saw it was refused now and then."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


class QemuImage:
    """A qcow2/vmdk/vhdx/vdi image read as the disk it holds: qemu-nbd serves it read-only on a
    private Unix socket, nbdcopy streams the disk (holes skipped by block status) into a pipe."""

    seekable = False

    def __init__(self, path: str, fmt: str, size: int):
        self.name, self.format, self.size = path, fmt, size
        self._dir = tempfile.mkdtemp(prefix="blockfold-qemu-")
        self._socket = os.path.join(self._dir, "nbd.sock")
        self._server = _spawn(["qemu-nbd", "--read-only", "--persistent", "--shared=8",
                               f"--format={fmt}", f"--socket={self._socket}",
                               os.path.abspath(path)], cwd=_beside(path))
        self._copy: subprocess.Popen | None = None

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self._socket):
            if self._server.poll() is not None:
                raise BadImageError(f"{self.name}: qemu-nbd cannot serve it: "
                                    f"{_reason(self._server.stderr.read())}")
            if time.monotonic() > deadline:
                raise BadImageError(f"{self.name}: qemu-nbd did not start")
            time.sleep(0.02)

    def chunks(self, chunk: int):
        """(offset, bytes) of every chunk that holds data, in order."""
        self._wait_listening()
        self._copy = _spawn(["nbdcopy", f"nbd+unix:///?socket={self._socket}", "-"],
                            stdout=subprocess.PIPE)
        out, offset = self._copy.stdout, 0
        while True:
            data = out.read(chunk)
            if not data:
                break
            if data != _ZEROS[:len(data)] or len(data) > len(_ZEROS):
                yield offset, data
            offset += len(data)
        if self._copy.wait() != 0 or offset != self.size:
            raise BadImageError(f"{self.name}: reading it as {self.format} failed"
                                f" ({offset} of {self.size} bytes): "
                                f"{_reason(self._copy.stderr.read()) or 'nbdcopy failed'}")

    def close(self) -> None:
        """Stops qemu-nbd and nbdcopy and removes the socket's directory (again: nothing)."""
        procs, self._copy, self._server = (self._copy, self._server), None, None
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def export_disk(admin, name: str, dest: str, format: str, progress=None, cancel=None,
                home: str | None = None, snapshot: str | None = None) -> None:
    """Writes VM `name` to the file `dest` as a `format` image (one of EXPORTS), as it was when the
    export began (Pool.frozen): raw through admin.export; qcow2 and vmdk by qemu-img convert from an
    NBD export of that state on a private Unix socket, served here over `admin` read-only (a
    service's client: from a sparse raw export beside `dest`). A file is replaced whole once the
    image is complete (engine.imageio.replacing); a device is written in place. `home`: the pool's
    or cluster's directory, as this process names it (None: a service's, on another machine): a
    `dest` inside it is refused before anything is written. `snapshot`: the VM's snapshot of that
    name instead. Raises VMNotFoundError, BadImageError."""
    if format not in EXPORTS:
        raise BadImageError(f"unknown format {format!r}: vm export writes {', '.join(EXPORTS)}")
    if home is not None and dest != "-":
        refuse_inside(home, dest)
    if format == "raw":
        admin.export(name, dest, progress, cancel, snapshot)
        return
    size = admin.vm_size(name)      # an unknown VM, told as such
    if dest == "-" or _stream(dest):
        raise BadImageError(f"a {format} image cannot be streamed"
                            f"{'' if dest == '-' else f' to {dest}'}: give a file")
    if size > MAX_VM_BYTES:         # a VM grown before the bound: qemu-img cannot open it
        raise BadImageError(f"cannot write {dest} as {format}: VM {name} is"
                            f" {formats.exact_size(size)}, past {formats.count(MAX_VM_BYTES)} B"
                            f" ({MAX_VM_WHY}); shrink it first (`vm resize {name} SIZE"
                            " --force`)")
    with replacing(dest) as path:
        if getattr(admin, "pool", None) is None:
            # A service's client holds no pool core to serve NBD from: the VM comes over as a
            # sparse raw file beside `dest` (holes stay holes), and qemu-img converts that.
            with scratch(path) as tmp:
                source = os.path.join(tmp, "disk.raw")
                try:
                    admin.export(name, source, progress, cancel, snapshot)
                except (BadImageError, OSError) as e:
                    why = e.strerror if isinstance(e, OSError) else str(e).split(": ")[-1]
                    raise BadImageError(f"cannot write {dest} as {format} (VM {name},"
                                        f" {formats.size(size)}): the raw copy it is converted"
                                        f" from, beside it, cannot be written: {why}") from None
                proc = _run(["qemu-img", "convert", "-f", "raw", "-O", format, source, path])
        else:
            # The VM as it was when the export began (Pool.frozen), however its NBD clients
            # write meanwhile, served alone under the name the core reads it through.
            with admin.pool.frozen(name, snapshot) as (view, size):
                served = served_over_nbd(FrozenExport(admin, view, size))
                with served as socket_path:
                    source = f"nbd+unix:///{view}?socket={socket_path}"
                    proc = _run(["qemu-img", "convert", "-f", "raw", "-O", format, source, path])
                if proc.returncode != 0 and served.said:
                    # Why a read failed, which qemu-img only knows as EIO.
                    raise BadImageError(f"cannot write {dest} as {format} (VM {name},"
                                        f" {formats.size(size)}):"
                                        f" {served.said[-1].replace(view, name)}")
        if proc.returncode != 0:
            # qemu-img names what it was given: our private socket (or temporary copy) and the
            # .part file, which mean nothing to the user; they are the VM and `dest`.
            said = _reason(proc.stderr).replace(source, f"VM {name}").replace(path, dest)
            raise BadImageError(f"cannot write {dest} as {format} (VM {name},"
                                f" {formats.size(size)}): {said.removeprefix(f'{dest}: ')}")


def _stream(dest: str) -> bool:
    """Whether `dest` is a pipe, socket or character device (/dev/stdout into a pipe): qemu-img
    seeks and sizes what it writes, and said "Could not resize file: Invalid argument"."""
    try:
        mode = os.stat(dest).st_mode
    except OSError:
        return False            # a new file
    return not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode))


def refuse_inside(directory: str, dest: str) -> None:
    """Refuses `dest` (a path) in the pool's or cluster's own `directory`, or a symlink to a
    file there (symlinks followed), where an export could overwrite the pool's own files.
    Raises BadImageError."""
    home = os.path.realpath(directory)
    where = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(dest))),
                         os.path.basename(dest))
    # The link itself, and where it leads: the export replaces its target (imageio.replacing).
    if any(os.path.commonpath([home, path]) == home
           for path in (where, os.path.realpath(dest))):
        raise BadImageError(f"refusing to write {dest}: it is inside {directory}, whose files"
                            " are the pool's: give a path outside it")


class FrozenExport:
    """One frozen state of a VM (Pool.frozen's view) as the Admin an NBDServer serves: the
    only export, read-only, named `view`; the rest is `admin`'s."""

    def __init__(self, admin, view: str, size: int):
        self.admin, self.view, self.size = admin, view, size
        self.pool, self.block_size = admin.pool, admin.block_size

    def vm_names(self) -> list[str]:
        return [self.view]

    def vm_size(self, name: str) -> int:
        if name != self.view:
            raise VMNotFoundError(f"no VM named {name!r}")
        return self.size

    def fenced(self) -> str: return self.admin.fenced()
    def flush(self) -> None: self.admin.flush()


class served_over_nbd:
    """Every VM of `admin`, exported read-only over NBD on a Unix socket in a private temporary
    directory, from a thread of this process, while the `with` lasts; yields the socket's
    path. What the server would log (a read's error) is kept in `said`, for the caller's one
    line, not printed: its export is a private name."""

    def __init__(self, admin):
        self.admin = admin
        self.said: list[str] = []

    def __enter__(self) -> str:
        import asyncio

        from .nbd.server import NBDServer       # asyncio's NBD, only when a format asks
        self._dir = tempfile.mkdtemp(prefix="blockfold-nbd-")
        path = os.path.join(self._dir, "nbd.sock")
        ready = threading.Event()
        self._failed: BaseException | None = None

        async def serve():
            try:
                server = NBDServer(self.admin, _native.Meter([]), read_only=True,
                                   log=self._said)
                await server.start_unix(path)
                self._stop = asyncio.Event()
                self._loop = asyncio.get_running_loop()
            except BaseException as e:
                self._failed = e
                raise
            finally:
                ready.set()
            await self._stop.wait()
            await server.close()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True,
                                        name="blockfold-export-nbd")
        self._thread.start()
        ready.wait()
        if self._failed is not None:
            raise BadImageError(f"cannot serve the VM over NBD: {self._failed}")
        return path

    def _said(self, message: str) -> None:
        # "EXPORT: why": the export is the caller's private name; the why names the VM.
        self.said.append(message.split(": ", 1)[-1])

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        shutil.rmtree(self._dir, ignore_errors=True)


def _beside(image: str) -> str:
    """The directory qemu runs in for `image`: the image's own (see the module's docstring)."""
    return os.path.dirname(os.path.abspath(image))


PR_SET_PDEATHSIG = 1        # prctl(2)
_libc = ctypes.CDLL(None, use_errno=True)


def _dies_with_us():
    """A preexec_fn: the child gets SIGTERM when the thread that started it ends, however it
    ends (kill -9 too). Resolved before the fork, so the child only makes two system calls."""
    parent, prctl = os.getpid(), _libc.prctl

    def child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:      # the parent died before the line above
            os._exit(1)
    return child


def _spawn(args: list[str], stdout=subprocess.DEVNULL, cwd: str | None = None
           ) -> subprocess.Popen:
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.PIPE, cwd=cwd, preexec_fn=_dies_with_us())
    except FileNotFoundError:
        raise BadImageError(f"{args[0]} is not installed (apt install qemu-utils"
                            " libnbd-bin)") from None


def _run(args: list[str], image: str | None = None) -> subprocess.CompletedProcess:
    """Runs a qemu tool; when `image` (its last argument) is given, in the image's directory
    and on its absolute path."""
    if image is not None:
        args = [*args[:-1], os.path.abspath(image)]
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=None if image is None else _beside(image),
                              preexec_fn=_dies_with_us())
    except FileNotFoundError:
        raise BadImageError(f"{args[0]} is not installed (apt install qemu-utils)") from None


def _reason(stderr) -> str:
    """The last line a qemu tool wrote on stderr, without its program-name prefix."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[-1] if lines else ""

