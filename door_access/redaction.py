"""Secrets never leave the config: redaction of events and log lines.

A webhook URL is often the secret itself (a Home Assistant webhook id is its path), and a hook's
stderr or an exception text may quote a URL, a password or a token. Everything the door writes
for others to read passes through here first:

- every event, where `Actions.publish` records and emits it (access log, MQTT, `--events-json`);
- every log line, by `RedactingFilter` on the root logger's handlers (`install_log_filter`).

What is redacted: any URL is cut to `scheme://host[:port]/…` (path, query and user:password
dropped); the configured secrets (`door.webhook_url` and its path parts, `door.webhook_secret`,
`mqtt.password`) wherever they appear verbatim; and `password=...`, `token: ...`, `Bearer ...`
style values.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import urllib.parse

from door_access.config import Config
from door_access.core import Event

MARK = "[redacted]"
MIN_SECRET = 4  # a shorter configured secret is not searched for: it would blank ordinary words
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s/?#'\"<>]*)([^\s'\"<>]*)")
_KEYED = re.compile(r"(?i)\b(password|passwd|token|secret|api[_-]?key|access[_-]?key|authorization)"
                    r"(\s*[=:]\s*)(?!(?:(?:bearer|basic)\s+)?\[redacted\])((?:bearer|basic)\s+)?[^\s&,;'\"]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]{8,}")


def _short_url(match: re.Match) -> str:
    scheme, netloc, rest = match.groups()
    host = netloc.rpartition("@")[2]  # user:password@ never shown
    return f"{scheme}://{host}" + ("/…" if rest not in ("", "/") else rest)


class Redactor:
    """Redacts URLs, keyed values and the given secrets from text and events."""

    def __init__(self, secrets: tuple[str, ...] | list[str] = ()):
        # longest first, so a secret that contains another is replaced whole
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True))

    @classmethod
    def from_config(cls, cfg: Config) -> Redactor:
        return cls(config_secrets(cfg))

    def text(self, text: str) -> str:
        if not text:
            return text
        text = _URL.sub(_short_url, text)
        for secret in self.secrets:
            text = text.replace(secret, MARK)
        text = _KEYED.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MARK}", text)
        return _BEARER.sub(lambda m: f"{m.group(1)} {MARK}", text)

    def event(self, event: Event) -> Event:
        """`event` with its detail redacted (names and numbers are not secrets: they stay)."""
        detail = self.text(event.detail)
        return event if detail == event.detail else dataclasses.replace(event, detail=detail)


def config_secrets(cfg: Config) -> list[str]:
    """The secrets in `cfg`: the webhook URL whole and its path segments, query values and password
    (a Home Assistant webhook id is a path segment), the webhook signing key, the broker password."""
    found = [cfg.door.webhook_secret, cfg.mqtt.password]
    if cfg.door.webhook_url:
        url = urllib.parse.urlsplit(cfg.door.webhook_url)
        found += [cfg.door.webhook_url, url.password, url.path + (f"?{url.query}" if url.query else "")]
        found += [part for part in url.path.split("/") if len(part) >= 8]  # "webhook", "api": not secrets
        found += [v for _, v in urllib.parse.parse_qsl(url.query)]
    return [s for s in found if s]


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message (arguments merged in) and exception text, redacted."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself, later
            return True
        record.msg, record.args = self.redactor.text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        return True


def install_log_filter(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Put `redactor` on every handler of `logger` (the root logger), replacing one installed before."""
    for handler in (logger or logging.getLogger()).handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(redactor))
