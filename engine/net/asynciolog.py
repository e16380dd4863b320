"""asyncio's own log lines that would flood stderr, quietened in one place (`quieten()`).

asyncio logs through the "asyncio" logger, one record per occurrence, some with a traceback:
- "socket.send() raised exception." for every write to a transport whose peer is gone but whose
  close it has not delivered yet; asyncssh writes a big request as hundreds of packets, so one
  dead node floods stderr. The loss itself reaches the caller (NodeUnreachable): dropped.
- "socket.accept() out of system resource" (with a traceback) each time a listening server (the
  service's admin socket) retries an accept at the open-file limit, once a second per listener
  for as long as the limit lasts: told in one line per burst (OUT_OF_FILES_QUIET_S without one
  ends a burst), naming the socket and the error.
"""

from __future__ import annotations

import logging
import math
import re
import time

LOST_WRITE = "socket.send() raised exception."
OUT_OF_FILES = "socket.accept() out of system resource"
OUT_OF_FILES_QUIET_S = 10.0     # this long without one ends a burst: the next one is told again


class _Quieten(logging.Filter):
    def __init__(self):
        super().__init__()
        self.last_out_of_files = -math.inf      # time.monotonic() of the last one seen

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message == LOST_WRITE:
            return False
        if not message.startswith(OUT_OF_FILES):
            return True
        now = time.monotonic()
        told = now - self.last_out_of_files < OUT_OF_FILES_QUIET_S
        self.last_out_of_files = now
        if told:
            return False
        error = record.exc_info[1] if record.exc_info else None
        where = re.search(r"laddr=([^,>]+)", message)
        record.msg = (f"blockfold: cannot accept a connection"
                      f"{' on ' + where.group(1) if where else ''}:"
                      f" {getattr(error, 'strerror', None) or error or 'out of resources'};"
                      " clients wait until files are freed (told once per burst)")
        record.args, record.exc_info, record.exc_text, record.stack_info = (), None, None, None
        return True


_filter = _Quieten()


def quieten() -> None:
    """Installs the filter on the "asyncio" logger (once, however often called)."""
    logger = logging.getLogger("asyncio")
    if _filter not in logger.filters:
        logger.addFilter(_filter)
