"""What makes a VM's name and size sane: its name appears in file names, URLs, NBD export names
and shells; its size must be one qemu can open (MAX_VM_BYTES)."""

import re

from . import formats
from .errors import BadNameError, OutOfRangeError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_vm_name(name: str, what: str = "VM") -> str:
    """`name` if it is sane; BadNameError naming `what` it was meant for (a VM, a snapshot)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadNameError(f"bad {what} name {name!r}: use 1-64 letters, digits, '.', '_' or"
                           " '-', starting with a letter or digit")
    return name


# The largest VM: the largest disk qemu opens (its BDRV_MAX_LENGTH, INT64_MAX rounded down to
# 1 GiB: 8 EiB less 1 GiB). Past it, every qemu tool refused the VM's NBD export ("Could not
# refresh total sector count: File too large"), so `vm export --format qcow2` too. Below every
# other bound: NBD's export size (64 bits), the catalog's INTEGER (63), an LBN (u64 blocks).
MAX_VM_BYTES = (1 << 63) - (1 << 30)
MAX_VM_WHY = "8 EiB less 1 GiB, the largest disk qemu opens"


def check_vm_size(size: int) -> int:
    """`size` (bytes) if a VM can be that big; OutOfRangeError if it cannot be (0, or past
    MAX_VM_BYTES). The CLI checks before it warns about a shrink to that size."""
    if not 0 < size <= MAX_VM_BYTES:
        raise OutOfRangeError(f"bad VM size {size}: it must be from 1 byte to"
                              f" {formats.count(MAX_VM_BYTES)} B ({MAX_VM_WHY})")
    return size
