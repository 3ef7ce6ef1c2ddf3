"""Per-person door policy from `people.yaml`: which days, hours, dates and doors let someone in.

    alice:
      days: [mon, tue, wed, thu, fri]   # default: every day
      hours: ["07:30-12:00", "13:00-18:00"]   # local time; "22:00-06:00" spans midnight; default: all day
      valid_from: 2026-01-01            # inclusive; default: always
      valid_until: 2026-06-30           # inclusive (the whole day)
      doors: [front, lab]               # `door.id`s; default: every door
      display_name: Alice Martin        # what the welcome says and shows; default: the name read out
                                        # ("alice_martin" -> "Alice Martin", `core.readable_name`)
    "*":                                # anyone enrolled without an entry of their own
      hours: "06:00-22:00"

People with no entry (and no "*") have no rules. Outside their rules the door denies with the
reason ("outside hours"), which is logged and shown like any denial. Unknown keys, bad days,
times and dates raise `ConfigError` naming the file and the line, like `config.yaml`; a file
that turns bad (or vanishes, as a network share can) while the door runs denies everyone until
it is fixed (fail closed); to drop all rules, empty the file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from door_access.config import ConfigError, compose_yaml
from door_access.core import readable_name

log = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERYONE = "*"
_KEYS = ("days", "hours", "valid_from", "valid_until", "doors", "display_name")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Rule:
    days: frozenset[int] | None = None  # weekday numbers (Monday 0), None: every day
    hours: tuple[tuple[dt.time, dt.time, str], ...] = ()  # (start, end, text); empty: all day
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    doors: frozenset[str] | None = None
    display_name: str | None = None  # not a rule: the name people read (the welcome, the window)

    def reason_denied(self, when: dt.datetime, door_id: str) -> str | None:
        if self.doors is not None and door_id not in self.doors:
            return f"not allowed at door {door_id}"
        if self.valid_from and when.date() < self.valid_from:
            return f"not valid before {self.valid_from.isoformat()}"
        if self.valid_until and when.date() > self.valid_until:
            return f"expired on {self.valid_until.isoformat()}"
        if self.days is not None and when.weekday() not in self.days:
            return f"not allowed on {DAYS[when.weekday()]}"
        if self.hours:
            now = when.time()
            if not any(start <= now < end if start < end else (now >= start or now < end)
                       for start, end, _ in self.hours):
                return "outside hours (" + ", ".join(text for _, _, text in self.hours) + ")"
        return None


class Policy:
    """The rules of everyone in one people.yaml; `reason_denied` is pure and takes microseconds."""

    def __init__(self, rules: dict[str, Rule] | None = None):
        self.rules = rules or {}

    def reason_denied(self, name: str, when: dt.datetime, door_id: str) -> str | None:
        """Why `name` may not enter door `door_id` at local time `when`, or None when they may."""
        rule = self.rules.get(name, self.rules.get(EVERYONE))
        return rule.reason_denied(when, door_id) if rule else None

    def display_name(self, name: str) -> str:
        """What the welcome says for `name`: its own `display_name`, else `readable_name(name)` ("*" gives none)."""
        rule = self.rules.get(name)
        return rule.display_name if rule and rule.display_name else readable_name(name)


def parse_policy(text: str, path: Path | str) -> Policy:
    """Parse people.yaml text; ConfigError names the file and line of the first problem."""
    node = compose_yaml(text, path)
    if node is None:
        return Policy()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path} line {node.start_mark.line + 1}: expected a mapping of person -> rules")
    rules: dict[str, Rule] = {}
    first: dict[str, int] = {}
    for key_node, value_node in node.value:
        name, line = str(key_node.value), key_node.start_mark.line + 1
        if name in first:
            raise ConfigError(f"{path} line {line}: '{name}' is given twice (first on line {first[name]})")
        first[name] = line
        rules[name] = _rule(name, value_node, path, line)
    return Policy(rules)


def _rule(name: str, node, path, name_line: int) -> Rule:
    if node.tag == "tag:yaml.org,2002:null":
        return Rule()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path} line {node.start_mark.line + 1}: rules of '{name}' must be a mapping")
    values = {}
    for key_node, value_node in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        where = f"{path} line {line}: '{name}.{key}'"
        if key not in _KEYS:
            raise ConfigError(f"{path} line {line}: unknown key '{name}.{key}' (known here: {', '.join(_KEYS)})")
        if key in values:
            raise ConfigError(f"{where} is given twice")
        try:
            value = yaml.SafeLoader("").construct_object(value_node, deep=True)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. 2026-13-01 looks like a date but is not one
            raise ConfigError(f"{where}: not a valid value ({exc}); a date is written like 2026-01-31") from None
        if key == "days":
            items = _list(value, where)
            bad = [d for d in items if str(d).lower()[:3] not in DAYS]
            if bad or not items:
                raise ConfigError(f"{where} must list days among {', '.join(DAYS)}, got {value!r}")
            values[key] = frozenset(DAYS.index(str(d).lower()[:3]) for d in items)
        elif key == "hours":
            values[key] = tuple(_hours(h, where) for h in _list(value, where))
        elif key == "display_name":
            if not isinstance(value, str) or not value.strip() or len(value) > 64 or not value.isprintable():
                raise ConfigError(f"{where} must be a name of 1-64 printable characters, got {value!r}")
            if name == EVERYONE:
                raise ConfigError(f"{where}: \"*\" stands for many people and cannot have one display name")
            values[key] = value.strip()
        elif key in ("valid_from", "valid_until"):
            values[key] = _date(value, where)
        else:  # doors
            doors = _list(value, where)
            if not doors or not all(isinstance(d, (str, int)) and str(d) for d in doors):
                raise ConfigError(f"{where} must be a list of door ids, got {value!r}")
            values[key] = frozenset(str(d) for d in doors)
    rule = Rule(**values)
    if rule.valid_from and rule.valid_until and rule.valid_until < rule.valid_from:
        raise ConfigError(f"{path} line {name_line}: '{name}.valid_until' is before its valid_from")
    return rule


def _list(value, where: str) -> list:
    if isinstance(value, (str, int)):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a value or a list, got {value!r}")
    return value


def _hours(text, where: str) -> tuple[dt.time, dt.time, str]:
    m = _RANGE.match(text) if isinstance(text, str) else None
    try:
        if not m:
            raise ValueError
        h0, m0, h1, m1 = map(int, m.groups())
        start = dt.time(h0, m0)
        end = dt.time(0, 0) if (h1, m1) == (24, 0) else dt.time(h1, m1)
    except ValueError:
        raise ConfigError(f"{where} must be a time range like \"08:00-18:00\", got {text!r}") from None
    if start == end:
        raise ConfigError(f"{where}: empty time range {text!r}")
    return start, end, f"{start:%H:%M}-{h1:02d}:{m1:02d}"


def _date(value, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{where} must be a date like 2026-01-31, got {value!r}") from None


class PolicyFile:
    """people.yaml, reread when it changes, so an operator's edit takes effect without a restart.

    A file missing at start means no rules. One that cannot be read or parsed, or that vanished,
    after the door started denies everybody (fail closed), with the reason, until it is fixed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._policy, self._broken = Policy(), ""
        self._load(strict=True)
        self._existed = self._stamp is not None

    def reason_denied(self, name: str, when: dt.datetime, door_id: str) -> str | None:
        with self._lock:
            self._load(strict=False)
            if self._broken:
                return f"door policy unusable: {self._broken}"
            return self._policy.reason_denied(name, when, door_id)

    def display_name(self, name: str) -> str:
        """`Policy.display_name` of the file as it is now; a broken file gives the name read out."""
        with self._lock:
            self._load(strict=False)
            return readable_name(name) if self._broken else self._policy.display_name(name)

    def allow(self, door_id: str):
        """The Decider's hook: (name, wall time) -> reason denied, or None."""
        return lambda name, wall: self.reason_denied(name, dt.datetime.fromtimestamp(wall), door_id)

    def _load(self, strict: bool) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            stamp = ("error", str(exc))
        if stamp == self._stamp and not strict:
            return
        self._stamp = stamp
        try:
            if stamp is None:
                if not strict and self._existed:
                    raise OSError(f"{self.path} vanished")
                self._policy, self._broken = Policy(), ""
                return
            self._policy = parse_policy(self.path.read_text(encoding="utf-8"), self.path)
            self._broken = ""
            log.info("door policy: %d entries from %s", len(self._policy.rules), self.path)
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            if strict:
                raise ConfigError(str(exc)) from None
            self._broken = str(exc)
            log.error("door policy %s unusable, denying everyone until fixed: %s", self.path, exc)
