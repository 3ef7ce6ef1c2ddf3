"""Capture against real local servers: a stream that stalls is lost and found again, a server that never
answers does not hang start-up, device paths are sources, and the capture is released by its own thread.
No model is loaded here."""

from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np
import pytest

from door_access.faces.capture import Capture, SourceError, open_source, parse_source

from conftest import wait_for

FRAMES = [cv2.imencode(".jpg", np.full((120, 160, 3), 8 * i, np.uint8))[1].tobytes() for i in range(10)]


class StallingServer:
    """A TCP server on 127.0.0.1. `mjpeg`: each connection gets an HTTP multipart MJPEG stream of 10
    frames, then nothing (the socket stays open, like a camera that hung). `silent`: accepts, never answers."""

    def __init__(self, mode: str):
        self.mode = mode
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            if self.mode == "mjpeg":
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=frame\r\n\r\n")
                for jpg in FRAMES:
                    conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                 + jpg + b"\r\n")
        except OSError:
            pass
        self._stop.wait()  # stall: keep the connection open, send nothing more

    def close(self) -> None:
        self._stop.set()
        for conn in self._clients:
            conn.close()
        self._sock.close()


@pytest.fixture
def server(request):
    s = StallingServer(request.param)
    yield s
    s.close()


@pytest.mark.parametrize("server", ["mjpeg"], indirect=True)
def test_a_stream_that_stalls_is_lost_after_lost_after_s_and_comes_back(server):
    status: list[tuple[str, str, float]] = []
    errors: list[BaseException] = []
    capture = Capture(f"http://127.0.0.1:{server.port}/stream", False, lost_after_s=1.0, reconnect_min_s=0.1,
                      reconnect_max_s=1.0,
                      on_status=lambda kind, detail: status.append((kind, detail, time.monotonic())))
    assert capture.live and not capture.is_file
    capture.start(errors.append)
    try:
        assert wait_for(lambda: capture.frames_in >= 5, 10)
        # FFmpeg's own default would block read() for 30 s; the read timeout makes it fail after ~1 s
        assert wait_for(lambda: any(kind == "camera_lost" for kind, *_ in status), 10), status
        assert wait_for(lambda: any(kind == "camera_back" for kind, *_ in status), 10), status
    finally:
        capture.stop(5.0)
    assert errors == [] and server.connections >= 2
    assert [kind for kind, *_ in status][:2] == ["camera_lost", "camera_back"]


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_a_stream_server_that_never_answers_fails_to_open_instead_of_hanging(server):
    result: list = []

    def open_it():
        try:
            Capture(f"rtsp://127.0.0.1:{server.port}/door", False, 1.0, 0.1, 1.0, open_timeout_s=1.0)
            result.append("opened")
        except SourceError as exc:
            result.append(exc)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(15)  # FFmpeg's own default open timeout is 30 s
    assert result and isinstance(result[0], SourceError), result
    assert "cannot open video source" in str(result[0]) and server.connections >= 1


def test_device_paths_are_sources_and_a_missing_one_is_named():
    assert parse_source("/dev/video2") == "/dev/video2"
    assert parse_source(" 0 ") == 0
    with pytest.raises(SourceError, match="not a camera index, a URL or an existing file"):
        parse_source("no_such_clip.mp4")
    with pytest.raises(SourceError, match="no camera at /dev/video97"):
        Capture(parse_source("/dev/video97"), False, 1.0, 0.1, 1.0)


class WatchedCapture:
    """A real cv2.VideoCapture that notes which thread releases it and whether a read() was running."""

    def __init__(self, url: str):
        self.cap = open_source(url, 2.0, 2.0)
        self.reading = False
        self.released_by: list[tuple[str, bool]] = []

    def isOpened(self) -> bool:
        return self.cap.isOpened()

    def get(self, prop: int) -> float:
        return self.cap.get(prop)

    def read(self):
        self.reading = True
        try:
            return self.cap.read()
        finally:
            self.reading = False

    def release(self) -> None:
        self.released_by.append((threading.current_thread().name, self.reading))
        self.cap.release()


@pytest.mark.parametrize("server", ["mjpeg"], indirect=True)
def test_stop_never_releases_the_capture_from_another_thread_while_read_runs(server):
    opened: list[WatchedCapture] = []

    def opener(source):
        opened.append(WatchedCapture(source))
        return opened[-1]

    capture = Capture(f"http://127.0.0.1:{server.port}/s", False, lost_after_s=30.0, reconnect_min_s=1.0,
                      reconnect_max_s=1.0, opener=opener)
    capture.start(lambda exc: None)
    assert wait_for(lambda: capture.frames_in >= len(FRAMES) and opened[0].reading, 10)  # now stuck in read()
    capture.stop(0.2)  # returns although read() is still blocked
    assert opened[0].released_by == []
    assert wait_for(lambda: opened[0].released_by, 10)  # the read timed out (2 s): released then, by its thread
    assert opened[0].released_by == [("capture", False)]
