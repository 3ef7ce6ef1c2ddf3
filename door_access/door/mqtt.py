"""The door on MQTT: events, lock state and the last person out; commands in; Home Assistant discovery.

Topics, under `<prefix>/<door.id>/` (prefix `door-access` by default):

    event         every event as JSON (the `--events-json` record + "door" and an ISO "time"), QoS 1
    state         "locked" / "unlocked" (retained), derived from the events: unlock -> unlocked, relock -> locked
    person        the last person let in (retained); cleared when they leave the gallery (`forget`)
    denied        {"event_type": "denied", "name", "reason", "time"} for each denial (a Home Assistant event)
    availability  "online" / "offline" (retained; "offline" is also the last will)
    command       in: "unlock", "lock", "reload_gallery" (plain text, or JSON {"command": ...}), or
                  "release NAME" / {"command": "release", "name": NAME} (end NAME's suspension); only
                  those in `mqtt.commands` are obeyed (default: "lock"), each refusal is a `denied` event

Nothing here can hold up the door: `publish()` only appends to a bounded in-memory queue; a
thread hands the queue to paho-mqtt while connected. paho's own thread connects and reconnects
with backoff (`reconnect_min_s` doubling to `reconnect_max_s`), so a broker that is down at
start or goes away is logged and retried, and the events queued meanwhile (up to `queue_size`,
oldest dropped first) go out when it is back. QoS 1 messages in flight when the connection
drops are resent by paho on reconnect.

A retained message on the command topic is ignored: otherwise anyone who once published a
retained "unlock" would open the door on every reconnect. A remote unlock obeys the lockout
(`door_commands`), and "unlock" may be allowed only over an authenticated or TLS connection
(checked at config load). The client id is the door's id, this host's name and a random suffix,
new at each start: another client cannot guess it, so it cannot take the door's session over
(a broker drops the older of two connections with one client id).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime

from door_access.config import MqttConfig
from door_access.core import DENIED, GALLERY, RELOCK, UNLOCK, Event

log = logging.getLogger(__name__)

COMMANDS = ("unlock", "lock", "reload_gallery", "release")
LOCKED, UNLOCKED = "locked", "unlocked"
ONLINE, OFFLINE = "online", "offline"


def iso_time(wall: float) -> str:
    """Local time with its UTC offset, as home automation hubs expect."""
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="milliseconds")


def event_record(event: Event, door_id: str) -> dict:
    """The `--events-json` record plus the door and an ISO time."""
    return {**json.loads(event.to_json()), "door": door_id, "time": iso_time(event.wall)}


def client_id(door_id: str) -> str:
    """`door-access-<door.id>-<host>-<48 random bits>`: readable in the broker's log, unique, unguessable."""
    door, host = (re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40] for text in (door_id, socket.gethostname()))
    return f"door-access-{door}-{host}-{secrets.token_hex(6)}"


def parse_command(payload: bytes) -> str | None:
    """`unlock`, `lock`, `reload_gallery` or `release` from a plain or JSON payload; None for anything else.
    `release` names a person (`release_name`); the other commands take nothing after them."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("command", ""))
        except (ValueError, AttributeError):
            return None
    text = text.strip().lower()
    word = text.split(maxsplit=1)[0] if text else ""
    return text if text in COMMANDS else "release" if word == "release" else None


def release_name(payload: bytes) -> str | None:
    """The person a `release` command names: JSON {"command": "release", "name": NAME} or plain "release NAME"."""
    try:
        text = payload.decode("utf-8").strip()
        name = json.loads(text).get("name") if text.startswith("{") else text.split(maxsplit=1)[1]
    except (UnicodeDecodeError, ValueError, AttributeError, IndexError):
        return None
    return name.strip() or None if isinstance(name, str) else None


class Topics:
    def __init__(self, cfg: MqttConfig, door_id: str):
        base = f"{cfg.prefix.rstrip('/')}/{door_id}"
        self.event, self.state, self.person = f"{base}/event", f"{base}/state", f"{base}/person"
        self.denied, self.availability, self.command = f"{base}/denied", f"{base}/availability", f"{base}/command"
        self.node = "door_access_" + re.sub(r"[^A-Za-z0-9_-]", "_", door_id)
        dp = cfg.discovery_prefix.rstrip("/")
        self.discovery = {
            "lock": f"{dp}/lock/{self.node}/lock/config",
            "person": f"{dp}/sensor/{self.node}/last_person/config",
            "denied": f"{dp}/event/{self.node}/denied/config",
            "reload": f"{dp}/button/{self.node}/reload_gallery/config",
        }


def discovery_configs(topics: Topics, door_id: str) -> dict[str, dict]:
    """Home Assistant MQTT discovery payloads: the door as a lock, a last-person sensor, a denial event
    and a reload-gallery button, grouped as one device."""
    device = {"identifiers": [topics.node], "name": f"Door {door_id}", "manufacturer": "door-access",
              "model": "face-recognition door"}
    common = {"availability_topic": topics.availability, "payload_available": ONLINE,
              "payload_not_available": OFFLINE, "device": device}
    return {
        topics.discovery["lock"]: {
            **common, "name": "Lock", "unique_id": f"{topics.node}_lock", "command_topic": topics.command,
            "state_topic": topics.state, "payload_lock": "lock", "payload_unlock": "unlock",
            "state_locked": LOCKED, "state_unlocked": UNLOCKED, "optimistic": False, "qos": 1},
        topics.discovery["person"]: {
            **common, "name": "Last person", "unique_id": f"{topics.node}_last_person",
            "state_topic": topics.person, "icon": "mdi:account-check"},
        topics.discovery["denied"]: {
            **common, "name": "Denied", "unique_id": f"{topics.node}_denied", "state_topic": topics.denied,
            "event_types": ["denied"], "icon": "mdi:account-cancel"},
        topics.discovery["reload"]: {
            **common, "name": "Reload gallery", "unique_id": f"{topics.node}_reload_gallery",
            "command_topic": topics.command, "payload_press": "reload_gallery"},
    }


class MqttBridge:
    """One door's MQTT link. `publish(event)` is the event sink; `on_command(name)` gets remote commands."""

    def __init__(self, cfg: MqttConfig, door_id: str, on_command: Callable[[str], None], base_dir=None,
                 enrolled: Callable[[], list[str]] | None = None):
        """`enrolled()`: who is in the gallery now, asked at each `gallery` event, so that the retained
        last person is cleared once they are removed (a broker must not keep a forgotten name)."""
        self.cfg = cfg
        self.enrolled = enrolled
        self._last_person: str | None = None  # the retained `person`, as published
        self.door_id = door_id
        self.on_command = on_command
        self.topics = Topics(cfg, door_id)
        self.client_id = client_id(door_id)  # kept across reconnects (a clean session: no state to resume)
        self.base_dir = base_dir
        self._pending: collections.deque[tuple[str, str, bool]] = collections.deque()
        self._cond = threading.Condition()
        self._connected = False
        self._stopping = False
        self._dropped = 0
        self._unreachable = False  # a "cannot reach the broker" warning was logged and no connection since
        self._lock_state = LOCKED  # the door starts locked; updated from the events
        self._client = None
        self._thread: threading.Thread | None = None

    # ---- the door's side ---------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue `event` (and the state it implies) for the broker; never blocks, never raises."""
        try:
            messages = [(self.topics.event, json.dumps(event_record(event, self.door_id), ensure_ascii=False), False)]
            if event.event == UNLOCK:
                self._lock_state = UNLOCKED
                messages.append((self.topics.state, UNLOCKED, True))
                if event.name:
                    self._last_person = event.name
                    messages.append((self.topics.person, event.name, True))
            elif event.event == RELOCK:
                self._lock_state = LOCKED
                messages.append((self.topics.state, LOCKED, True))
            elif event.event == GALLERY and self._last_person and self.enrolled is not None \
                    and self._last_person not in self.enrolled():
                self._last_person = None
                messages.append((self.topics.person, "", True))  # an empty retained message deletes it
            elif event.event == DENIED:
                messages.append((self.topics.denied, json.dumps(
                    {"event_type": "denied", "name": event.name, "reason": event.detail,
                     "time": iso_time(event.wall)}, ensure_ascii=False), False))
            with self._cond:
                for message in messages:
                    if len(self._pending) >= self.cfg.queue_size:
                        self._pending.popleft()
                        self._dropped += 1
                        if self._dropped == 1:
                            log.warning("mqtt: %d messages waiting for the broker; dropping the oldest",
                                        self.cfg.queue_size)
                    self._pending.append(message)
                self._cond.notify()
        except Exception:  # a sink must never break the actions worker
            log.exception("mqtt: cannot queue %s", event.event)

    @property
    def connected(self) -> bool:
        return self._connected

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        import paho.mqtt.client as mqtt

        c = self.cfg
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True)
        client.enable_logger(logging.getLogger(__name__ + ".paho"))
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls:
            ca = str(self.base_dir / c.tls_ca) if (c.tls_ca and self.base_dir is not None) else c.tls_ca
            client.tls_set(ca_certs=ca)
            if c.tls_insecure:
                client.tls_insecure_set(True)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(c.reconnect_min_s, c.reconnect_max_s)
        client.max_queued_messages_set(c.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._client = client
        client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        client.loop_start()  # paho's thread: connects, and reconnects with backoff, on its own
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        log.info("mqtt: connecting to %s:%d as door %r (client id %s)", c.host, c.port, self.door_id, self.client_id)

    def stop(self, timeout: float = 1.0) -> None:
        """Send what is queued and "offline" (while connected), disconnect; bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and self._connected and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        client = self._client
        if client is None:
            return
        try:
            if self._connected:
                info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
                info.wait_for_publish(max(0.05, deadline - time.monotonic()))
            client.disconnect()
        except Exception as exc:
            log.debug("mqtt: stopping: %s", exc)
        client.loop_stop()
        self._client = None

    # ---- paho callbacks (its network thread) -----------------------------------------------

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port)
        client.subscribe(self.topics.command, qos=1)
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        client.publish(self.topics.state, self._lock_state, qos=1, retain=True)
        if self.cfg.discovery:
            for topic, config in discovery_configs(self.topics, self.door_id).items():
                client.publish(topic, json.dumps(config), qos=1, retain=True)
        with self._cond:
            self._connected, self._unreachable = True, False
            self._cond.notify()

    def _on_connect_fail(self, _client, _userdata) -> None:
        if not self._unreachable:
            log.warning("mqtt: cannot reach the broker %s:%d; retrying every %g-%g s, events are queued meanwhile",
                        self.cfg.host, self.cfg.port, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
            self._unreachable = True

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        with self._cond:
            was, self._connected = self._connected, False
        if was and not self._stopping:
            log.warning("mqtt: lost the broker %s:%d (%s); reconnecting, events are queued meanwhile",
                        self.cfg.host, self.cfg.port, reason_code)

    def _on_message(self, _client, _userdata, msg) -> None:
        if msg.retain:
            log.warning("mqtt: ignoring a retained message on %s (commands must not be retained)", msg.topic)
            return
        command = parse_command(msg.payload)
        if command is None:
            log.warning("mqtt: unknown command %r on %s", msg.payload[:80], msg.topic)
            return
        args = (release_name(msg.payload),) if command == "release" else ()
        try:
            self.on_command(command, *args)
        except Exception:
            log.exception("mqtt: command %r failed", command)

    # ---- the publisher thread ------------------------------------------------------------------

    def _run(self) -> None:
        """Hand queued messages to paho while connected; keep them while not."""
        import paho.mqtt.client as mqtt

        while True:
            with self._cond:
                while not self._stopping and not (self._connected and self._pending):
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                topic, payload, retain = self._pending.popleft()
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # paho's own buffer is full: keep it for later
                with self._cond:
                    self._pending.appendleft((topic, payload, retain))
                    self._cond.wait(0.5)
            elif info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("mqtt: publishing on %s failed (%s)", topic, mqtt.error_string(info.rc))
            # MQTT_ERR_NO_CONN: paho keeps a QoS 1 message and resends it once reconnected


def door_commands(allowed: tuple[str, ...], notify: Callable[..., None], lock_now: Callable[[], None],
                  reload_gallery: Callable[[], None], locked_out: Callable[[], bool],
                  release: Callable[[str], bool] | None = None) -> Callable[..., None]:
    """Remote commands as the door obeys them: only those `allowed` (`mqtt.commands`); an unlock goes the
    door's own way (an UNLOCK notice, detail `source: mqtt`) and only while the door is not `locked_out()`
    after repeated failed attempts; `release(name)` ends a person's suspension (False: there was nothing to
    release). `notify(kind, detail=...)` records an event (access log, MQTT, `--events-json`): each remote
    unlock, and each refusal as a `denied` (no payload text, only the command)."""

    def run(command: str, name: str | None = None) -> None:
        if command not in allowed:
            refused = f"source: mqtt: command {command!r} refused: not in mqtt.commands"
        elif command == "unlock" and locked_out():
            refused = "source: mqtt: unlock refused: locked out after repeated failed attempts"
        elif command == "release" and (release is None or not name):
            refused = "source: mqtt: release refused: it names nobody (release NAME)"
        else:
            log.info("mqtt: remote command %r", command)
            if command == "release":
                if not release(name):
                    log.warning("mqtt: release: %r is not suspended and has no failed attempt counted", name)
                return
            {"unlock": lambda: notify(UNLOCK, detail="source: mqtt"), "lock": lock_now,
             "reload_gallery": reload_gallery}[command]()
            return
        log.warning("mqtt: %s", refused)
        notify(DENIED, detail=refused)

    return run
