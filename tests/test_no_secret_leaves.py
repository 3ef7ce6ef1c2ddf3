"""No secret leaves the config (issue 25, part 5): not in an event, a log line or an MQTT message.

Before: a failing webhook put its URL (a Home Assistant webhook id is the secret itself) into the
`fault` detail, hence into the access log, `--events-json` and the MQTT event topic, and a hook's
stderr went the same way. Here a real webhook fails at a URL with a secret path, a real hook
prints every configured secret to its stderr, a real broker carries the events to a subscriber,
and everything the door wrote is searched for them.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
from mqtt_broker import Listener, broker_or_skip, free_port

from door_access.config import load_config
from door_access.core import FAULT, UNLOCK, Event, Notice
from door_access.door.access_log import AccessLog
from door_access.door.actions import Actions
from door_access.door.mqtt import MqttBridge, door_commands
from door_access.door.speech import Speaker
from door_access.redaction import MARK, RedactingFilter, Redactor, install_log_filter

from conftest import wait_for

WEBHOOK_ID = "front-door-7Hq2xLm9Pz"
SIGNING_KEY = "sign-3e7f9a0b1c2d"
BROKER_PASSWORD = "broker-pw-5k8v2q"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = broker_or_skip(tmp_path_factory)
    yield broker
    broker.kill()


def test_no_event_log_line_or_mqtt_message_holds_the_webhook_url_or_a_password(broker, tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}/api/webhook/{WEBHOOK_ID}"  # nobody listens: the webhook fails
    leak = (f"relay: POST {url} refused; user door password={BROKER_PASSWORD} (pw {BROKER_PASSWORD}) "
            f"key {SIGNING_KEY} id {WEBHOOK_ID}")
    path = tmp_path / "config.yaml"
    path.write_text(
        f"door:\n  id: side\n  unlock_seconds: 0.2\n  webhook_url: {url}\n  webhook_secret: {SIGNING_KEY}\n"
        f"  unlock_command: [{json.dumps(sys.executable)}, '-c', 'import sys; sys.stderr.write(sys.argv[1]); "
        f"sys.exit(3)', {json.dumps(leak)}]\n"
        f"tts:\n  enabled: false\naccess_log:\n  path: {tmp_path / 'log.sqlite'}\n  snapshots_dir: null\n"
        f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {broker.port}\n  username: door\n"
        f"  password: {BROKER_PASSWORD}\n  commands: [unlock, lock]\n")
    cfg = load_config(path)
    caplog.set_level(logging.DEBUG)
    install_log_filter(Redactor.from_config(cfg))  # as `door-access` does once the config is read
    log = AccessLog(tmp_path / "log.sqlite", door_id="side")
    events: list[Event] = []
    actions = Actions(cfg, log, Speaker(cfg.tts, None))
    bridge = MqttBridge(cfg.mqtt, "side", door_commands(
        cfg.mqtt.commands, lambda kind, detail: actions.submit(Notice(Event(kind, *actions.clock(), detail=detail))),
        lambda: actions.door.lock("remote lock"), lambda: None, lambda: False))
    actions.emit = lambda e: (events.append(e), bridge.publish(e))
    hub = Listener(broker.port, "door-access/side/#")
    actions.start()
    bridge.start()
    try:
        assert wait_for(lambda: bridge.connected, 10)
        actions.submit(Notice(Event(UNLOCK, *actions.clock(), name="ana", distance=0.4, track=1)))  # a face
        hub.client.publish(bridge.topics.command, "unlock", qos=1).wait_for_publish(5)  # and a remote unlock
        # each unlock: the hook fails (its stderr) and the webhook fails (its URL)
        assert wait_for(lambda: len([e for e in events if e.event == FAULT]) == 4, 20), events
        assert wait_for(lambda: len([p for t, p, _ in hub.messages if '"fault"' in p]) == 4, 10), hub.messages
    finally:
        bridge.stop()
        actions.stop()
        hub.close()
        for handler in logging.getLogger().handlers:
            for f in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
                handler.removeFilter(f)
    logged = log.query()
    log.close()

    faults = [e.detail for e in events if e.event == FAULT]
    # what was said instead: the webhook's scheme and host, the hook's failure with its stderr redacted
    assert sum(d.startswith(f"webhook http://127.0.0.1:{url.split(':')[2].split('/')[0]}/… failed for unlock")
               for d in faults) == 2, faults
    assert sum("exited with code 3: relay: POST http://127.0.0.1" in d and f"password={MARK}" in d
               and f"(pw {MARK}) key {MARK} id {MARK}" in d for d in faults) == 2, faults
    written = {
        "access log": [e.to_json() for e, _door in logged],
        "events": [e.to_json() for e in events],
        "log records": [r.getMessage() for r in caplog.records] + [caplog.text],
        "MQTT messages": [f"{t} {p}" for t, p, _ in hub.messages],
    }
    assert len(written["access log"]) >= 6 and any("webhook" in m for m in written["log records"])
    for where, texts in written.items():
        for secret in (url, f"/api/webhook/{WEBHOOK_ID}", WEBHOOK_ID, SIGNING_KEY, BROKER_PASSWORD):
            assert not [t for t in texts if secret in t], f"{secret!r} leaked into the {where}"


@pytest.mark.parametrize("text, shown", [
    ("POST https://user:pw@ha.local:8123/api/webhook/abc?x=1 failed", "POST https://ha.local:8123/… failed"),
    ("rtsp://admin:1234@10.0.0.7 lost", "rtsp://10.0.0.7 lost"),
    ("camera http://cam.local/ ok", "camera http://cam.local/ ok"),
    ("curl: Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x", f"curl: Authorization: Bearer {MARK}"),
    ("login failed: password=hunter2&user=x", f"login failed: password={MARK}&user=x"),
    ("the relay said token: 9f8e7d", f"the relay said token: {MARK}"),
    ("unknown face (closest: obama)", "unknown face (closest: obama)"),
])
def test_urls_keyed_values_and_bearer_tokens_are_cut_and_plain_text_is_kept(text, shown):
    redactor = Redactor()
    assert redactor.text(text) == shown
    assert redactor.text(shown) == shown  # redacting twice changes nothing


def test_configured_secrets_are_redacted_verbatim_and_a_short_one_is_not_searched_for():
    redactor = Redactor(["verbatim-secret", "abc"])
    assert redactor.text("said verbatim-secret and abc") == f"said {MARK} and abc"
