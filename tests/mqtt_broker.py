"""A real mosquitto broker on a free loopback port, for the MQTT tests (installed when root and missing)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def find_mosquitto() -> str | None:
    """The broker binary; installed with apt-get (Debian package `mosquitto`) when root and missing."""
    found = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "install", "-y", "-qq", "mosquitto"], ["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "mosquitto"]):
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        if argv[1] == "install" and done.returncode == 0:
            break
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto with persistence, so a restart keeps the subscribers' sessions (like a real install)."""

    def __init__(self, binary: str, folder: Path, access: str = "allow_anonymous true\n"):
        """`access`: the conf lines on who may connect (e.g. a password file and an ACL)."""
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{access}persistence true\n"
                             f"persistence_location {folder}/\nuser {getpass.getuser()}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "mosquitto.log", "ab"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {(self.folder / 'mosquitto.log').read_text()[-500:]}")

    def kill(self) -> None:
        """SIGTERM: the broker dies (every connection drops) after saving its sessions, as on a host reboot."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class Listener:
    """A subscriber, e.g. Home Assistant: collects (topic, payload text, retained) per message."""

    def __init__(self, port: int, topic: str, client_id: str = "", persistent: bool = False,
                 username: str | None = None, password: str | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.2, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.payload.decode("utf-8", "replace"), bool(m.retain)))
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber could not subscribe"

    def on(self, topic: str) -> list[str]:
        return [p for t, p, _ in list(self.messages) if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def broker_or_skip(tmp_path_factory) -> Broker:
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install paho-mqtt)")
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed and cannot be (not root, or no apt-get): apt-get install mosquitto")
    broker = Broker(binary, tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    return broker
