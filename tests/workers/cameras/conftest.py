"""Real servers on 127.0.0.1 for the camera tests: an HTTP snapshot server, a silent TCP
listener, and the GStreamer RTSP server of ``tests/support/rtsp_server.py``, plus toy shelf frames."""

from __future__ import annotations

import http.server
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.workers.conftest import toy_scene

REPO = Path(__file__).resolve().parents[3]
RTSP_SERVER = REPO / "tests" / "support" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def shelf(seed: int = 3) -> np.ndarray:
    """A 512 x 512 RGB toy shelf (``toy_scene`` at scale 4)."""
    image, _ = toy_scene(seed, scale=4)
    return image


def without_one_product(seed: int = 3) -> np.ndarray:
    """The same toy shelf with its smallest rectangle painted over with background texture."""
    from tests.detector.conftest import toy_picture

    rng = np.random.default_rng(seed)
    image, rows = toy_picture(rng, n_max=5)
    areas = (rows[:, 3] - rows[:, 1]) * (rows[:, 4] - rows[:, 2])
    _, x1, y1, x2, y2 = rows[int(np.argmin(areas))].astype(int)
    background = np.random.default_rng(seed + 1000).integers(90, 170, image.shape, dtype=np.uint8)
    image[y1:y2, x1:x2] = cv2.GaussianBlur(background, (5, 5), 0)[y1:y2, x1:x2]
    return cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- HTTP ---------------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer: status, headers, body; ``trickle_s`` sends the body a byte at a time;
    ``length`` overrides Content-Length; ``silent`` sends nothing at all."""

    status: int = 200
    content_type: str = "image/jpeg"
    body: bytes = b""
    trickle_s: float = 0.0
    length: int | None = None
    silent: bool = False


@dataclass
class SnapshotServer:
    url: str
    replies: list[Reply] = field(default_factory=list)
    served: int = 0


@pytest.fixture
def snapshot_server() -> Iterator[SnapshotServer]:
    """A threaded ``http.server`` on 127.0.0.1 answering each GET with the next scripted :class:`Reply`."""
    state = SnapshotServer(url="")
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply = state.replies[min(state.served, len(state.replies) - 1)]
            state.served += 1
            if reply.silent:
                stop.wait(30)
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body) if reply.length is None else reply.length))
            self.end_headers()
            if reply.trickle_s:
                for i in range(len(reply.body)):
                    if stop.wait(reply.trickle_s):
                        return
                    self.wfile.write(reply.body[i : i + 1])
                    self.wfile.flush()
            else:
                self.wfile.write(reply.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/snapshot.jpg"
    try:
        yield state
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connection refused)."""
    return free_port()


# --- RTSP ---------------------------------------------------------------------------------


def _rtsp_missing() -> str | None:
    if not Path("/usr/bin/ffmpeg").exists():
        return "/usr/bin/ffmpeg is missing (apt-get install ffmpeg)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True, timeout=30, check=False,
    )
    if probe.returncode != 0:
        return "the gi module or GstRtspServer 1.0 is missing for /usr/bin/python3 (apt-get install python3-gi " \
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good)"
    return None


@pytest.fixture(scope="session")
def rtsp_available() -> None:
    reason = _rtsp_missing()
    if reason:
        pytest.skip(reason)


@dataclass
class RtspServer:
    port: int
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def start(self, timeout_s: float = 15.0, foreground: str = "0xffffffff") -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            process = subprocess.Popen(
                [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--foreground", foreground],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "GST_DEBUG": "0"},
            )
            assert process.stdout is not None
            line = ""
            while time.monotonic() < deadline and process.poll() is None:
                ready, _, _ = select.select([process.stdout], [], [], 0.2)
                if ready:
                    line = process.stdout.readline()
                    break
            if line.startswith("READY"):
                self.process = process
                return
            process.kill()
            process.wait(5)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the RTSP server did not start on port {self.port}: {line!r}")
            time.sleep(0.3)  # the port may still be held by the killed server: retry

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


@pytest.fixture
def rtsp_server(rtsp_available: None) -> Iterator[RtspServer]:
    """The GStreamer RTSP server (moving ball, 320x240, 10 fps MJPEG) on a free port, started."""
    server = RtspServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


def wait_for(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; raises AssertionError after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not true within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - started


