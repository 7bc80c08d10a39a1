"""A real RTSP server on 127.0.0.1 for camera tests: GStreamer's ``gst-rtsp-server`` via PyGObject.

Run with the system Python (``/usr/bin/python3``), which has the Debian ``gir1.2-gst-rtsp-server-1.0``
and ``python3-gi`` packages; the project venv does not:

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 [--path /live] [--pattern ball] [--foreground 0xffff0000]

It serves a live, moving test pattern (``videotestsrc is-live=true``, 320x240 at 10 fps, MJPEG
over RTP, payload type 26: only gstreamer1.0-plugins-base and -good are needed, no x264) at
``rtsp://127.0.0.1:<port><path>``, shared between clients, and prints ``READY rtsp://...`` on
stdout once it listens. It runs until killed (SIGTERM / SIGINT / SIGKILL).

This file must stay importable without ``gi`` (pytest collects nothing from it; the tests only
start it as a subprocess).
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Serve the test pattern until killed; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/live")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (ball, smpte, ...)")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--foreground", default="0xffffffff", help="ARGB colour of the ball (tells two runs apart)")
    args = parser.parse_args(argv)

    import gi  # type: ignore[import-not-found]  # Debian's python3-gi, not in the venv

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern={args.pattern} foreground-color={int(args.foreground, 0)} "
        f"! video/x-raw,width=320,height=240,framerate={args.fps}/1 "
        "! videoconvert ! video/x-raw,format=I420 ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"FAILED cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
