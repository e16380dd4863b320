"""What makes a VM name sane: it appears in file names, URLs, NBD export names and shells."""

import re

from .errors import BadNameError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_vm_name(name: str, what: str = "VM") -> str:
    """`name` if it is sane; BadNameError naming `what` it was meant for (a VM, a snapshot)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadNameError(f"bad {what} name {name!r}: use 1-64 letters, digits, '.', '_' or"
                           " '-', starting with a letter or digit")
    return name
