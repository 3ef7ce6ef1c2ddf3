"""The webhook: unlock, alarm and fault events POSTed as signed JSON from a thread of its own, so a
slow or failing server never holds up the door."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import urllib.request
from collections.abc import Callable

from door_access.core import Event
from door_access.redaction import Redactor

log = logging.getLogger(__name__)

_STOP = object()  # queue sentinel: nothing is sent after it


SIGNATURE_HEADER = "X-Door-Signature"  # "sha256=" + hex HMAC-SHA256 of the raw body with door.webhook_secret


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: a receiver recomputes it over the raw body and compares in constant time."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error (HTTPError 3xx): the signed event is not replayed to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class WebhookSender:
    """POSTs unlock and alarm events from its own thread, so a slow server never holds up the door.

    The body is JSON, signed in `X-Door-Signature` when `door.webhook_secret` is set; redirects
    are not followed. A failure is logged and handed to `report(event, detail)`, which records a FAULT."""

    MAX_PENDING = 16

    def __init__(self, url: str, secret: str | None, timeout_s: float, report: Callable[[Event, str], None],
                 redactor: Redactor):
        self.url = url
        self.redactor = redactor  # the URL is often the secret itself (a Home Assistant webhook id)
        self.secret = secret
        self.timeout_s = timeout_s
        self.report = report
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def post(self, event: Event) -> None:
        if self._queue.qsize() >= self.MAX_PENDING:
            self._failed(event, f"{self.MAX_PENDING} webhook calls still waiting; this one is dropped")
            return
        self._queue.put(event)

    def stop(self, timeout: float) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (event := self._queue.get()) is not _STOP:
            try:
                self._send(event)
            except Exception as exc:  # refused, timed out, HTTP error, redirect: all the same to the door
                self._failed(event, f"{type(exc).__name__}: {exc}")

    def _send(self, event: Event) -> None:
        record = {"event": event.event, "name": event.name, "distance": event.distance,
                  "track": event.track, "t": event.t, "wall": event.wall, "detail": event.detail}
        if event.display_name is not None:
            record["display_name"] = event.display_name
        body = json.dumps(record, ensure_ascii=False).encode("utf-8", "backslashreplace")
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(body, self.secret)
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        with _OPENER.open(request, timeout=self.timeout_s) as response:  # raises HTTPError on 3xx/4xx/5xx
            response.read(65536)

    def _failed(self, event: Event, reason: str) -> None:
        detail = self.redactor.text(f"webhook {self.url} failed for {event.event}: {reason}")
        log.warning("actions: %s", detail)
        self.report(event, detail)
