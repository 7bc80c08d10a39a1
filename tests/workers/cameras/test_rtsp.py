"""grab_rtsp and RtspReader against a real RTSP server (GStreamer, moving ball, 10 fps) on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

from tests.workers.cameras.conftest import RtspServer, wait_for
from workers.cameras import CameraError, CameraState, RtspReader, grab_rtsp
from workers.ingest import decode_image


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_grab_rtsp_gets_a_jpeg_frame(rtsp_server: RtspServer) -> None:
    frame = grab_rtsp(rtsp_server.url, open_timeout_s=8.0, read_timeout_s=5.0)
    assert (frame.width, frame.height) == (320, 240)
    decoded = decode_image(frame.data)
    assert decoded.format == "JPEG" and decoded.resolution_wh == (320, 240)
    assert frame.captured_at.utcoffset() is not None


@pytest.mark.timeout(30)
def test_grab_rtsp_times_out_on_a_listener_that_never_answers(silent_listener: int) -> None:
    started = time.monotonic()
    with pytest.raises(CameraError) as caught:
        grab_rtsp(f"rtsp://admin:secret@127.0.0.1:{silent_listener}/live", open_timeout_s=2.0, read_timeout_s=2.0)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "camera_timeout"
    assert elapsed < 2.0 + 2.0 + 1.5
    assert "secret" not in str(caught.value)


@pytest.mark.timeout(30)
def test_grab_rtsp_connection_refused_is_unreachable(closed_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(CameraError) as caught:
        grab_rtsp(f"rtsp://127.0.0.1:{closed_port}/live", open_timeout_s=3.0, read_timeout_s=3.0)
    assert caught.value.reason == "camera_unreachable"
    assert time.monotonic() - started < 3.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reader_goes_offline_when_the_server_dies_and_back_online_when_it_returns(rtsp_server: RtspServer) -> None:
    read_timeout_s = 2.0
    with RtspReader(
        rtsp_server.url, open_timeout_s=8.0, read_timeout_s=read_timeout_s, backoff_initial_s=0.2, backoff_max_s=1.0
    ) as reader:
        wait_for(lambda: reader.state is CameraState.ONLINE, 20.0)
        first = reader.latest(max_age_s=1.0)
        assert first is not None and (first.width, first.height) == (320, 240)
        time.sleep(1.0)  # a slow consumer: the frames meanwhile are dropped, not queued
        second = reader.latest(max_age_s=1.0)
        assert second is not None and second.sha256 != first.sha256
        assert reader.frames_dropped >= 3
        assert second.captured_at > first.captured_at

        rtsp_server.kill()
        went_offline_s = wait_for(lambda: reader.state is CameraState.OFFLINE, read_timeout_s + 3.0)
        print(f"offline after {went_offline_s:.2f} s")
        assert went_offline_s < read_timeout_s + 3.0
        assert reader.last_error is not None
        assert reader.latest(max_age_s=1.0) is None or reader.state is CameraState.OFFLINE

        rtsp_server.start(foreground="0xffff0000")  # a red ball: frames of the new run differ from the old
        wait_for(lambda: reader.state is CameraState.ONLINE, 20.0)
        resumed = reader.latest(max_age_s=1.0)
        assert resumed is not None
        assert resumed.sha256 not in {first.sha256, second.sha256}
        assert resumed.captured_at > second.captured_at
        assert reader.reconnects >= 1


@pytest.mark.timeout(30)
def test_reader_of_a_silent_listener_stays_offline_and_closes_promptly(silent_listener: int) -> None:
    reader = RtspReader(f"rtsp://127.0.0.1:{silent_listener}/live", open_timeout_s=1.0, read_timeout_s=1.0)
    try:
        time.sleep(1.5)
        assert reader.state is CameraState.OFFLINE
        assert reader.latest(max_age_s=10.0) is None
        wait_for(lambda: reader.last_error is not None, 5.0)
        assert reader.last_error is not None and reader.last_error.reason == "camera_timeout"
    finally:
        started = time.monotonic()
        reader.close()
        assert time.monotonic() - started < 1.0 + 1.5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reader_goes_offline_when_the_server_freezes_and_recovers_when_it_resumes(rtsp_server: RtspServer) -> None:
    import os
    import signal

    read_timeout_s = 2.0
    assert rtsp_server.process is not None
    with RtspReader(
        rtsp_server.url, open_timeout_s=8.0, read_timeout_s=read_timeout_s, backoff_initial_s=0.2, backoff_max_s=1.0
    ) as reader:
        wait_for(lambda: reader.state is CameraState.ONLINE, 20.0)
        os.kill(rtsp_server.process.pid, signal.SIGSTOP)  # connection open, no more frames
        try:
            went_offline_s = wait_for(lambda: reader.state is CameraState.OFFLINE, read_timeout_s + 3.0)
            assert went_offline_s < read_timeout_s + 3.0
            assert reader.latest(max_age_s=read_timeout_s) is None
        finally:
            os.kill(rtsp_server.process.pid, signal.SIGCONT)
        wait_for(lambda: reader.state is CameraState.ONLINE, 30.0)
        assert reader.latest(max_age_s=1.0) is not None
