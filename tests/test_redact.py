"""Credentials never reach what is shown."""

from __future__ import annotations

import pytest

from shelftally.redact import mask_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", ""),
        ("sqlite:///shelftally.db", "sqlite:///shelftally.db"),
        ("https://example.com/hook", "https://example.com/hook"),
        ("https://bob:pw@example.com:8443/hook", "https://***:***@example.com:8443/hook"),
        ("https://token@example.com/hook?key=k", "https://***:***@example.com/hook?***"),
        ("postgresql+psycopg://app:s3cr3t@db.internal:5432/stock", "postgresql+psycopg://***:***@db.internal:5432/stock"),
        ("rtsp://admin:p%40ss@10.0.0.7:554/Streaming/Channels/101", "rtsp://***:***@10.0.0.7:554/Streaming/Channels/101"),
        ("http://cam.local/snap.jpg?user=admin&pwd=12345", "http://cam.local/snap.jpg?***"),
        ("rtsp://[fe80::1]:554/s", "rtsp://[fe80::1]:554/s"),
        ("rtsp://u:p@[fe80::1]:554/s", "rtsp://***:***@[fe80::1]:554/s"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    masked = mask_url(url)
    assert masked == expected
    for secret in ("pw", "s3cr3t", "p%40ss", "12345", "token"):
        if secret in url:
            assert secret not in masked
