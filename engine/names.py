"""What makes a VM's name and size sane: its name appears in file names, URLs, NBD export names
and shells; its size must fit the catalog."""

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


MAX_VM_BYTES = (1 << 63) - 1    # the catalog's largest INTEGER (sqlite), and qemu's largest disk


def check_vm_size(size: int) -> int:
    """`size` (bytes) if a VM can be that big; OutOfRangeError if the catalog cannot hold it (0,
    or past MAX_VM_BYTES). The CLI checks before it warns about a shrink to that size."""
    if not 0 < size <= MAX_VM_BYTES:
        raise OutOfRangeError(f"bad VM size {size}: it must be from 1 byte to "
                              f"{formats.size(MAX_VM_BYTES)}")
    return size
