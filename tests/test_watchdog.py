"""The progress monitor (fake clock) and the sd_notify datagrams (a real AF_UNIX socket the test binds)."""

from __future__ import annotations

import threading
import time

import pytest

from door_access.sd_notify import Notifier
from door_access.watchdog import Monitor, Watchdog

from conftest import Datagrams, wait_for


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


def test_a_stage_with_work_waiting_and_no_progress_stalls_at_its_limit(clock):
    monitor = Monitor(clock)
    waiting = {"encoder": True}
    encoder = monitor.watch("encoder", lambda: waiting["encoder"], 5.0)
    decider = monitor.watch("decider", lambda: True, 5.0)
    assert monitor.check() is None  # first look: the counts are new
    clock.now += 4.9
    assert monitor.check() is None
    encoder.tick()  # progress restarts its clock (from the check that sees it)
    decider.tick()
    clock.now += 4.9
    assert monitor.check() is None
    clock.now += 4.9
    decider.tick()
    assert monitor.check() is None
    clock.now += 0.2
    decider.tick()
    stage, quiet = monitor.check()
    assert stage is encoder and quiet == pytest.approx(5.1)
    assert monitor.worst()["encoder"] == pytest.approx(5.1)


def test_an_idle_stage_is_never_stalled(clock):
    monitor = Monitor(clock)
    queue_len = [0]
    monitor.watch("decider", lambda: queue_len[0] > 0, 2.0)
    for _ in range(10):
        clock.now += 60.0
        assert monitor.check() is None
    queue_len[0] = 1  # work arrives: only now does its clock start
    clock.now += 1.9
    assert monitor.check() is None
    clock.now += 0.2
    assert monitor.check()[0].name == "decider"
    assert monitor.worst() == {"decider": pytest.approx(2.1)}


def test_each_stage_has_its_own_limit_and_may_count_progress_itself(clock):
    monitor = Monitor(clock)
    reads = [0]
    monitor.watch("capture", lambda: True, 13.0, progress=lambda: reads[0])
    actions = monitor.watch("actions", lambda: True, 20.0)
    monitor.check()
    clock.now += 12.0
    reads[0] += 1
    actions.tick()
    assert monitor.check() is None
    clock.now += 13.0
    assert monitor.check()[0].name == "capture"


def test_notifier_sends_to_a_path_and_to_the_abstract_namespace(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sink = Datagrams(str(path))
    abstract = Datagrams(f"\0door-access-test-{id(sink)}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert Notifier().notify("READY=1")
        assert Notifier(f"@door-access-test-{id(sink)}").notify("WATCHDOG=1")
        assert wait_for(lambda: sink.messages() == ["READY=1"] and abstract.messages() == ["WATCHDOG=1"], 5)
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert not Notifier().notify("READY=1")  # not run by systemd: nothing to tell
        assert not Notifier(str(tmp_path / "nobody-listens")).notify("READY=1")  # logged, never raised
    finally:
        sink.close()
        abstract.close()


def test_watchdog_pings_while_stages_progress_and_never_once_one_stalled(tmp_path):
    """A real thread that works, then blocks forever with work waiting: pings stop, on_stall names it."""
    sink = Datagrams(str(tmp_path / "notify"))
    monitor = Monitor()
    release = threading.Event()
    block = threading.Event()
    stage = monitor.watch("encoder", lambda: True, 0.5)
    last_tick = [0.0]

    def work():
        while not block.is_set():
            last_tick[0] = time.monotonic()  # taken before the tick: never later than the monitor's own
            stage.tick()
            time.sleep(0.01)
        release.wait()  # a stage stuck forever (until the test ends)

    stalled = []
    dog = Watchdog(monitor, lambda s, quiet: stalled.append((s.name, quiet, time.monotonic())), every_s=0.05,
                   notifier=Notifier(str(tmp_path / "notify")))
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    dog.start()
    try:
        assert wait_for(lambda: sink.messages().count("WATCHDOG=1") >= 5, 10)
        block.set()
        assert wait_for(lambda: stalled, 10)
        [(name, quiet, at)] = stalled
        # reported only once the stage's last unit of work is stall_s old (not a bound on how soon)
        assert name == "encoder" and quiet >= 0.5 and at - last_tick[0] >= 0.5
        time.sleep(0.3)  # several check periods after the stall
        assert not [t for t, m in sink.got if m == "WATCHDOG=1" and t > at]
        assert dog.stalled[0] is stage and len(stalled) == 1
    finally:
        release.set()
        dog.stop()
        sink.close()
