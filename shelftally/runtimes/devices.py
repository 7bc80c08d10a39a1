"""Device strings shared by the detector and classifier backends."""

from __future__ import annotations

from shelftally.errors import ConfigurationError


def parse_cuda_device(device: str) -> int | None:
    """The CUDA device index of ``"cuda"`` / ``"cuda:N"``, or None for other device strings (``"cpu"``).

    Raises:
        ConfigurationError: ``"cuda:<not an integer>"`` (reason ``invalid_device``).
    """
    name = device.strip().lower()
    if name == "cuda":
        return 0
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit():
            raise ConfigurationError(f"device {device!r}: expected cuda:N with N an integer", reason="invalid_device")
        return int(index)
    return None
