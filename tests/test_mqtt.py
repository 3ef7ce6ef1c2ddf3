"""The door on MQTT, against a real mosquitto on a loopback port (installed by this setup when root).

Home Assistant discovery, remote commands through the door's own actions path, and a real
pipeline on a real clip whose broker is killed and restarted while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from mqtt_broker import Listener, broker_or_skip

from door_access.config import AccessLogConfig, DoorConfig, LivenessConfig, MqttConfig, TtsConfig
from door_access.core import DENIED, GALLERY, RELOCK, UNLOCK, Event, Notice
from door_access.door.access_log import AccessLog
from door_access.door.actions import Actions
from door_access.door.mqtt import MqttBridge, Topics, door_commands, parse_command
from door_access.door.speech import Speaker

from conftest import FR_IMAGES, make_config, wait_for


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = broker_or_skip(tmp_path_factory)
    yield broker
    broker.kill()


def mqtt_cfg(broker, **kw) -> MqttConfig:
    return MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0,
                      **kw)


def test_commands_parse_plain_and_json_and_nothing_else():
    assert parse_command(b"unlock") == "unlock"
    assert parse_command(b' {"command": "RELOAD_GALLERY"} ') == "reload_gallery"
    assert parse_command(b"open sesame") is None
    assert parse_command(b'{"command": ') is None
    assert parse_command(b"\xff\xfe") is None


def test_discovery_is_retained_and_parses_and_availability_follows_the_door(broker):
    cfg = mqtt_cfg(broker)
    bridge = MqttBridge(cfg, "front", on_command=lambda c: None)
    topics = Topics(cfg, "front")
    # `connected` only says paho queued the configs; a subscriber that is there first sees them once
    # the broker has stored them (it stores a retained message before it forwards it)
    early = Listener(broker.port, "homeassistant/#")
    bridge.start()
    try:
        assert wait_for(lambda: bridge.connected and len(early.messages) >= 4, 10), early.messages
        early.close()
        # a hub that starts later still finds the door: every config is retained
        hub = Listener(broker.port, "homeassistant/#")
        assert wait_for(lambda: len(hub.messages) >= 4, 10), hub.messages
        configs = {t: json.loads(p) for t, p, retained in hub.messages if retained}
        assert set(configs) == set(topics.discovery.values())
        lock = configs[topics.discovery["lock"]]
        assert (lock["command_topic"], lock["state_topic"]) == ("door-access/front/command", "door-access/front/state")
        assert (lock["payload_unlock"], lock["state_locked"], lock["state_unlocked"]) == ("unlock", "locked",
                                                                                         "unlocked")
        assert configs[topics.discovery["person"]]["state_topic"] == "door-access/front/person"
        assert configs[topics.discovery["denied"]]["event_types"] == ["denied"]
        assert len({c["unique_id"] for c in configs.values()}) == 4
        assert all(c["availability_topic"] == "door-access/front/availability" for c in configs.values())
        hub.close()
        state = Listener(broker.port, "door-access/front/+")
        assert wait_for(lambda: state.on(topics.availability) == ["online"] and state.on(topics.state) == ["locked"])
    finally:
        bridge.stop()
    assert wait_for(lambda: state.on(topics.availability)[-1:] == ["offline"])
    state.close()


def test_remote_unlock_opens_the_door_is_logged_and_lock_relocks_at_once(broker, tmp_path):
    opened = tmp_path / "opened"
    cfg = make_config(tmp_path, door=DoorConfig(unlock_command=(shutil.which("touch"), str(opened)),
                                                unlock_seconds=60.0, id="side"),
                      tts=TtsConfig(enabled=False),
                      access_log=AccessLogConfig(path=str(tmp_path / "log.sqlite"), snapshots_dir=None),
                      mqtt=mqtt_cfg(broker, username="door", commands=("unlock", "lock", "reload_gallery")))
    log = AccessLog(tmp_path / "log.sqlite", door_id="side")
    events: list[Event] = []
    actions = Actions(cfg, log, Speaker(cfg.tts, None), emit=events.append)
    reloads = []
    bridge = MqttBridge(cfg.mqtt, "side", door_commands(
        cfg.mqtt.commands, lambda kind, detail: actions.submit(Notice(Event(kind, 0.0, 0.0, detail=detail))),
        lambda: actions.door.lock("remote lock"), lambda: reloads.append(1), lambda: False))
    actions.emit = lambda e: (events.append(e), bridge.publish(e))
    topics = bridge.topics
    # a retained "unlock" left on the command topic must not open the door when it connects
    sender = Listener(broker.port, "door-access/side/state")
    sender.client.publish(topics.command, "unlock", qos=1, retain=True).wait_for_publish(5)
    actions.start()
    bridge.start()
    try:
        assert wait_for(lambda: bridge.connected and sender.on(topics.state) == ["locked"], 10)
        sender.client.publish(topics.command, "", qos=1, retain=True).wait_for_publish(5)  # clear it
        assert not opened.exists() and not events
        sender.client.publish(topics.command, "unlock", qos=1).wait_for_publish(5)
        assert wait_for(lambda: opened.exists() and sender.on(topics.state)[-1:] == ["unlocked"], 10)
        sender.client.publish(topics.command, '{"command": "lock"}', qos=1).wait_for_publish(5)
        assert wait_for(lambda: sender.on(topics.state)[-1:] == ["locked"], 10)  # not after unlock_seconds (60)
        sender.client.publish(topics.command, "reload_gallery", qos=1).wait_for_publish(5)
        assert wait_for(lambda: reloads == [1], 10)
    finally:
        bridge.stop()
        actions.stop()
        sender.close()
    logged = [(e.event, e.detail, door) for e, door in log.query()]
    log.close()
    assert logged == [(UNLOCK, "source: mqtt", "side"), (RELOCK, "remote lock", "side")]


@pytest.mark.model
def test_clip_unlocks_reach_mqtt_and_survive_a_broker_restart(broker, tmp_path, detector, encoder):
    """The real app on a real clip: obama, a long empty stretch, obama again. The broker is killed
    after the first unlock reaches it; the door keeps deciding; the second unlock, queued while the
    broker was away, arrives once it is back."""
    from door_access.app import build_pipeline
    from door_access.runner import open_capture
    from door_access.tools.democlip import Segment, write_clip

    images = tmp_path / "images" / "obama"
    images.mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "1.jpg")
    shutil.copy(FR_IMAGES / "obama3.jpg", images / "2.jpg")
    clip = write_clip(detector, [Segment(FR_IMAGES / "obama2.jpg", 2.0), Segment(None, 3.5),
                                 Segment(FR_IMAGES / "obama2.jpg", 2.0), Segment(None, 0.5)],
                      tmp_path / "clip.mp4", fps=15.0)
    cfg = make_config(tmp_path, door=DoorConfig(unlock_seconds=0.5, cooldown_seconds=0.0, id="lobby"),
                      tts=TtsConfig(enabled=False), liveness=LivenessConfig(enabled=False),
                      access_log=AccessLogConfig(path=str(tmp_path / "log.sqlite"), snapshots_dir=None),
                      mqtt=mqtt_cfg(broker, username="door", commands=("unlock", "lock")))
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, images=str(tmp_path / "images")))
    hub = Listener(broker.port, "door-access/lobby/#", client_id="test-hub", persistent=True)
    topics = Topics(cfg.mqtt, "lobby")
    events: list[Event] = []
    # played in real time: the broker is killed and restarted while the clip's empty stretch plays
    pipeline = build_pipeline(cfg, cfg.path("images"), open_capture(cfg, str(clip), realtime=True), events.append,
                              encoder=encoder)
    pipeline.start()
    try:
        def unlocks_on_mqtt():
            return [json.loads(p) for p in hub.on(topics.event) if json.loads(p)["event"] == UNLOCK]

        assert wait_for(lambda: unlocks_on_mqtt(), 120), (events, hub.messages)
        first = unlocks_on_mqtt()[0]
        assert (first["name"], first["door"]) == ("obama", "lobby") and "T" in first["time"]
        assert wait_for(lambda: "unlocked" in hub.on(topics.state) and hub.on(topics.person) == ["obama"], 10)

        broker.kill()
        assert wait_for(lambda: not pipeline.mqtt.connected, 10)
        before = len([e for e in events if e.event == UNLOCK])
        assert wait_for(lambda: len([e for e in events if e.event == UNLOCK]) > before, 120), events
        assert wait_for(lambda: pipeline.finished.is_set(), 120)
        assert pipeline.failure is None  # the door kept deciding with no broker
        assert pipeline.mqtt.queued() > 0 and len(unlocks_on_mqtt()) == 1

        broker.start()
        assert wait_for(lambda: len(unlocks_on_mqtt()) == 2, 30), hub.messages
        assert wait_for(lambda: hub.on(topics.state)[-1:] == ["locked"], 10)
        sent = [json.loads(p)["event"] for p in hub.on(topics.event)]
        local = [e.event for e in events]
        assert sent == local[:len(sent)]  # in order, nothing lost

        # the app's own wiring of a remote unlock: the door opens, and it is logged as remote
        hub.client.publish(topics.command, "unlock", qos=1).wait_for_publish(5)
        assert wait_for(lambda: any(e.event == UNLOCK and e.detail == "source: mqtt" for e in events), 10)
        # ...and it asks the decider's lockout on the clock of the frames it decided on
        pipeline.decider.locked_out_until = pipeline.latest.frame.t + 60.0  # as after repeated failures
        hub.client.publish(topics.command, "unlock", qos=1).wait_for_publish(5)
        assert wait_for(lambda: any(e.event == DENIED and "locked out" in e.detail for e in events), 10), events
    finally:
        pipeline.stop()
        hub.close()
    log = AccessLog(tmp_path / "log.sqlite")
    remote = [(e.event, door) for e, door in log.query(person=None) if e.detail == "source: mqtt"]
    log.close()
    assert remote == [(UNLOCK, "lobby")]


def test_a_broker_that_is_down_at_start_is_logged_and_never_blocks_the_door(caplog):
    from mqtt_broker import free_port

    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=free_port(), reconnect_min_s=0.1, reconnect_max_s=0.2,
                     queue_size=5)
    bridge = MqttBridge(cfg, "cellar", on_command=lambda c: None)
    bridge.start()
    try:
        for i in range(20):  # returns at once: only the newest 5 messages are kept
            bridge.publish(Event(UNLOCK, float(i), 0.0, f"p{i}"))
        assert bridge.queued() == 5 and not bridge.connected
        assert wait_for(lambda: "cannot reach the broker" in caplog.text, 10), caplog.text
        assert "dropping the oldest" in caplog.text
    finally:
        bridge.stop(0.5)


def test_the_retained_last_person_is_cleared_when_they_leave_the_gallery(broker):
    """`forget obama` on a running door: the broker must not keep serving "obama" as the last person."""
    enrolled = ["biden", "obama"]
    bridge = MqttBridge(mqtt_cfg(broker), "front", on_command=lambda c: None, enrolled=lambda: list(enrolled))
    topics = bridge.topics
    bridge.start()
    try:
        bridge.publish(Event(UNLOCK, 1.0, 0.0, "obama"))
        bridge.publish(Event(GALLERY, 2.0, 0.0, detail="2 people"))  # obama still enrolled: kept
        late = Listener(broker.port, topics.person)  # a subscriber arriving now gets the retained name
        assert wait_for(lambda: late.on(topics.person) == ["obama"], 10)
        enrolled.remove("obama")
        bridge.publish(Event(GALLERY, 3.0, 0.0, detail="1 people"))
        assert wait_for(lambda: late.on(topics.person) == ["obama", ""], 10)  # deleted
        later = Listener(broker.port, topics.person)
        bridge.publish(Event(UNLOCK, 4.0, 0.0, "biden"))
        assert wait_for(lambda: later.on(topics.person) == ["biden"], 10)  # nothing retained before biden
        late.close()
        later.close()
    finally:
        bridge.stop()
