"""Telling systemd how the door is (READY=1, WATCHDOG=1, STOPPING=1): the notify protocol's few lines.

A library would add a dependency for one datagram; the protocol is one `sendto` on a Unix socket.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) without a library: one datagram to $NOTIFY_SOCKET ('@' = Linux abstract namespace).

    Without the variable (not run by systemd) every call does nothing; a failed send is logged once."""

    def __init__(self, address: str | None = None):
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._warned = False

    def notify(self, state: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode("utf-8"), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False
