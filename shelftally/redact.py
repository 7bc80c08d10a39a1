"""Hiding secrets in what is shown: logs, CLI output, API responses."""

from __future__ import annotations

from urllib.parse import urlsplit


def mask_url(url: object) -> str:
    """Return ``url`` fit for display: credentials and the query string become ``***``.

    ``https://bob:pw@example.com/hook?token=t`` -> ``https://***:***@example.com/hook?***``;
    ``rtsp://admin:pw@10.0.0.7:554/stream1`` -> ``rtsp://***:***@10.0.0.7:554/stream1``;
    a URL without credentials or query comes back unchanged. Secrets carried in the path itself
    (as in some chat webhooks) cannot be recognised and stay.

    Args:
        url: a URL (anything whose ``str()`` is one, e.g. ``httpx.URL``).
    """
    text = str(url)
    parts = urlsplit(text)
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***:***@" + netloc.rsplit("@", 1)[1]
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?***" if parts.query else "")
