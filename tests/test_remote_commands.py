"""Remote commands only for who may (issue 25, part 4), against a real mosquitto on a loopback port.

Before: with `mqtt.enabled` anyone who could publish `unlock` on `<prefix>/<door>/command` opened
the door, also during a lockout, and a client connecting with the door's fixed client id
(`door-access-<door.id>`) threw the door off the broker. Now only `mqtt.commands` are obeyed
(default `[lock]`), each refusal is a `denied` event, `unlock` is refused at config load over an
anonymous plain connection, a remote unlock obeys the lockout, and every start has its own
unguessable client id.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mqtt_broker import Broker, Listener, broker_or_skip, find_mosquitto

from door_access.config import ConfigError, LockoutConfig, MqttConfig, VotingConfig, load_config
from door_access.core import DENIED, RELOCK, UNLOCK, Box, Event, Match, Notice
from door_access.door.access_log import AccessLog
from door_access.door.actions import Actions
from door_access.door.decision import Decider
from door_access.door.mqtt import MqttBridge, door_commands
from door_access.door.speech import Speaker
from door_access.door.tracking import Track

from conftest import REPO, wait_for


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = broker_or_skip(tmp_path_factory)
    yield broker
    broker.kill()


def write_config(tmp_path: Path, port: int, mqtt: str = "") -> Path:
    """A real config file: a door whose unlock hook touches `opened`, MQTT on the test broker."""
    path = tmp_path / "config.yaml"
    path.write_text(f"door:\n  id: side\n  unlock_seconds: 60.0\n  unlock_command: [{shutil.which('touch')}, "
                    f"{tmp_path / 'opened'}]\ntts:\n  enabled: false\naccess_log:\n  path: {tmp_path / 'log.sqlite'}\n"
                    f"  snapshots_dir: null\nmqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n"
                    f"  reconnect_min_s: 0.2\n  reconnect_max_s: 1.0\n{mqtt}")
    return path


class Door:
    """The app's wiring of the MQTT commands (app.build_pipeline) around the real Actions, door
    controller, access log and bridge; `decider` is the one whose lockout a remote unlock obeys."""

    def __init__(self, cfg, decider: Decider | None = None):
        self.cfg, self.events = cfg, []
        self.log = AccessLog(cfg.resolve(cfg.access_log.path), door_id=cfg.door.id)
        self.actions = Actions(cfg, self.log, Speaker(cfg.tts, None))
        self.decider = decider or Decider(VotingConfig(), cfg.door, 1.0)
        self.bridge = MqttBridge(cfg.mqtt, cfg.door.id, door_commands(
            cfg.mqtt.commands, self.notify, lambda: self.actions.door.lock("remote lock"), lambda: None,
            lambda: self.decider.locked_out(time.monotonic())))
        self.actions.emit = lambda e: (self.events.append(e), self.bridge.publish(e))

    def notify(self, kind: str, detail: str = "") -> None:
        self.actions.submit(Notice(Event(kind, *self.actions.clock(), detail=detail)))

    def __enter__(self):
        self.actions.start()
        self.bridge.start()
        assert wait_for(lambda: self.bridge.connected, 10)
        return self

    def __exit__(self, *exc):
        self.bridge.stop()
        self.actions.stop()

    def logged(self) -> list[tuple[str, str]]:
        return [(e.event, e.detail) for e, _door in self.log.query()]


def send(broker, topic: str, payload: str) -> None:
    sender = Listener(broker.port, topic + "/ignored")
    sender.client.publish(topic, payload, qos=1).wait_for_publish(5)
    sender.close()


def test_with_the_default_commands_a_remote_unlock_is_refused_and_logged(broker, tmp_path):
    cfg = load_config(write_config(tmp_path, broker.port))
    assert cfg.mqtt.commands == ("lock",)
    hub = Listener(broker.port, "door-access/side/#")
    with Door(cfg) as door:
        send(broker, door.bridge.topics.command, "unlock")
        assert wait_for(lambda: any(e.event == DENIED for e in door.events), 10), door.events
        send(broker, door.bridge.topics.command, "lock")  # allowed: it relocks at once
        assert wait_for(lambda: any(e.event == RELOCK and e.detail == "remote lock" for e in door.events), 10)
        assert wait_for(lambda: len(hub.on(door.bridge.topics.denied)) == 1, 10), hub.messages
    hub.close()
    assert not (tmp_path / "opened").exists()  # the unlock hook never ran
    refused = "source: mqtt: command 'unlock' refused: not in mqtt.commands"
    assert (DENIED, refused) in door.logged() and UNLOCK not in [kind for kind, _ in door.logged()]
    assert refused in hub.on(door.bridge.topics.denied)[0]
    door.log.close()


@pytest.mark.parametrize("mqtt, allowed", [
    ("  commands: [unlock, lock]\n", False),
    ("  commands: [unlock]\n  tls: true\n  tls_insecure: true\n", False),  # TLS that accepts any server: no
    ("  commands: [unlock]\n  username: door\n  password: hunter22\n", True),
    ("  commands: [unlock]\n  tls: true\n", True),
    ("  commands: [lock, reload_gallery]\n", True),
    ("  commands: []\n", True),  # events only
])
def test_unlock_over_an_anonymous_plain_connection_is_refused_at_load_naming_the_key(tmp_path, mqtt, allowed):
    path = write_config(tmp_path, 1883, mqtt)
    if allowed:
        assert load_config(path).mqtt.commands == tuple(mqtt.split("[")[1].split("]")[0].replace(",", " ").split())
        return
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = 1 + path.read_text().splitlines().index(mqtt.splitlines()[0])
    assert f"line {line}: 'mqtt.commands' allows 'unlock'" in str(err.value)
    assert "mqtt.username" in str(err.value) and "mqtt.tls" in str(err.value)


def test_an_unknown_command_in_the_list_is_refused_naming_the_key(tmp_path):
    path = write_config(tmp_path, 1883, "  commands: [lock, open]\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(ConfigError, match=fr"line {line}: 'mqtt.commands': 'open' not among unlock, lock, reload_gal"):
        load_config(path)


def test_two_doors_with_one_id_and_a_client_with_the_old_fixed_id_cannot_throw_the_door_off(broker, caplog):
    """A broker drops the older of two connections with one client id: with a fixed id a second door
    (or anyone who guesses it) threw the door off and the two reconnected in turn, forever."""
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    first, second = (MqttBridge(cfg, "front", on_command=lambda c: None) for _ in range(2))
    hub = Listener(broker.port, "door-access/front/event")
    first.start()
    try:
        assert wait_for(lambda: first.connected, 10)
        second.start()
        assert wait_for(lambda: second.connected, 10)
        squatter = Listener(broker.port, "nothing/here", client_id="door-access-front")  # the old fixed id
        for i, bridge in enumerate((first, second, first)):  # a round trip through each after the others came
            bridge.publish(Event(UNLOCK, float(i), 0.0, f"p{i}"))
            assert wait_for(lambda i=i: len(hub.on("door-access/front/event")) == i + 1, 10)
        squatter.close()
    finally:
        first.stop()
        second.stop()
        hub.close()
    assert "lost the broker" not in caplog.text, caplog.text
    assert first.client_id != second.client_id and first.client_id.startswith("door-access-front-")


def test_a_remote_unlock_during_the_lockout_is_refused_and_logged_and_obeyed_after_it(broker, tmp_path):
    cfg = load_config(write_config(tmp_path, broker.port, "  commands: [unlock, lock]\n  username: door\n"))
    decider = Decider(VotingConfig(window=5, required=3), cfg.door, 1.0,
                      lockout=LockoutConfig(failures=1, window_s=60.0, cooloff_s=2.0))
    t0 = time.monotonic()
    stranger = Track(1, Box(100, 100, 120, 120), t0, t0)
    for i in range(5):  # a stranger's face: one failed attempt, which is the whole lockout's budget here
        stranger.last_seen = t0 + i * 0.01
        decided = decider.observe(t0 + i * 0.01, [stranger], {1: Match(None, 1.3, "kian")}, None,
                                  {1: Match(None, 1.3, "kian")})
    assert [d.event for d in decided] == [DENIED, "alarm"] and decider.locked_out(time.monotonic())
    with Door(cfg, decider) as door:
        send(broker, door.bridge.topics.command, "unlock")
        assert wait_for(lambda: any(e.event == DENIED for e in door.events), 10), door.events
        assert not (tmp_path / "opened").exists()
        assert wait_for(lambda: not decider.locked_out(time.monotonic()), 10)
        send(broker, door.bridge.topics.command, "unlock")  # the lockout is over: obeyed, and said to be remote
        assert wait_for(lambda: (tmp_path / "opened").exists(), 10), door.events
    assert door.logged()[:2] == [
        (DENIED, "source: mqtt: unlock refused: locked out after repeated failed attempts"), (UNLOCK, "source: mqtt")]
    door.log.close()


def documented_block(after: str) -> str:
    """The first fenced block in docs/mqtt.md after the line holding `after`."""
    text = (REPO / "docs" / "mqtt.md").read_text()
    rest = text[text.index(after):]
    start = rest.index("```text\n") + len("```text\n")
    return rest[start:rest.index("```", start)]


def test_the_documented_acl_lets_home_assistant_command_the_door_and_nobody_else(tmp_path_factory):
    """A real mosquitto with docs/mqtt.md's password file and ACL: the door publishes its events to Home
    Assistant and obeys its unlock; a client without a password cannot connect; another broker user, and
    the door's own user, cannot command it, and the other user reads nothing."""
    import paho.mqtt.client as mqtt

    binary, passwd_tool = find_mosquitto(), shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("acl")
    users = {"door-front": "door-pw-1", "homeassistant": "ha-pw-2", "guest": "guest-pw-3"}
    for user, password in users.items():
        subprocess.run([passwd_tool, "-b", *(["-c"] if user == "door-front" else []), str(folder / "passwd"),
                        user, password], check=True, capture_output=True)
    (folder / "acl").write_text(documented_block("`/etc/mosquitto/acl`"))
    conf = documented_block("`/etc/mosquitto/conf.d/door-access.conf`").splitlines()
    assert conf[0].startswith("listener ")  # the test broker has its own loopback listener
    access = "".join(line.replace("/etc/mosquitto/", f"{folder}/") + "\n" for line in conf[1:])
    broker = Broker(binary, folder, access)
    broker.start()
    tmp = folder / "door"
    tmp.mkdir()
    cfg = load_config(write_config(tmp, broker.port, "  commands: [unlock, lock]\n  username: door-front\n"
                                                     "  password: door-pw-1\n"))
    cfg = dataclasses.replace(cfg, door=dataclasses.replace(cfg.door, id="front"))
    try:
        refused = []
        anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        anonymous.on_connect = lambda c, u, f, reason, p: refused.append(reason.is_failure)
        anonymous.connect_async("127.0.0.1", broker.port)
        anonymous.loop_start()
        assert wait_for(lambda: refused, 10) and refused[0]  # no password, no connection
        anonymous.loop_stop()

        hub = Listener(broker.port, "door-access/#", username="homeassistant", password="ha-pw-2")
        guest = Listener(broker.port, "door-access/#", username="guest", password="guest-pw-3")
        itself = Listener(broker.port, "nothing", username="door-front", password="door-pw-1")
        with Door(cfg) as door:
            command = door.bridge.topics.command
            assert wait_for(lambda: hub.on(door.bridge.topics.state) == ["locked"], 10), hub.messages
            for intruder in (guest, itself):  # accepted by the broker (QoS 1 acknowledged), never delivered
                intruder.client.publish(command, "unlock", qos=1).wait_for_publish(5)
            hub.client.publish(command, "lock", qos=1).wait_for_publish(5)  # after the intruders', in order
            assert wait_for(lambda: any(e.detail == "remote lock" for e in door.events), 10), door.events
            assert not (tmp / "opened").exists() and not any(e.event in (UNLOCK, DENIED) for e in door.events)
            hub.client.publish(command, "unlock", qos=1).wait_for_publish(5)
            assert wait_for(lambda: (tmp / "opened").exists(), 10), door.events
            assert wait_for(lambda: "unlocked" in hub.on(door.bridge.topics.state), 10), hub.messages
        assert [(e.event, e.detail) for e in door.events if e.event == UNLOCK] == [(UNLOCK, "source: mqtt")]
        assert any(t == door.bridge.topics.event for t, _p, _r in hub.messages) and guest.messages == []
        door.log.close()
        for listener in (hub, guest, itself):
            listener.close()
    finally:
        broker.kill()
