"""Configure ultralytics so that it never touches the network.

Measured on these machines (ENVIRONMENT.md): every import checks connectivity unless
``YOLO_OFFLINE=1``; train/val fetch ``Arial.ttf`` unless a font already sits in the config dir;
ONNX export without onnxslim tries a ``pip install`` unless ``YOLO_AUTOINSTALL=false``; the first
settings file records whatever directory the process was in; OpenVINO export and ONNX Runtime
look up telemetry hosts unless ``CI=true`` / ``ORT_DISABLE_TELEMETRY=1``.

Call :func:`configure_offline` before the first ``import ultralytics`` of the process (every
module of this package that imports ultralytics does it at call time, never at import time).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shelftally.errors import MissingDependencyError

_DONE: dict[str, Path] = {}


def _font_source() -> Path | None:
    candidates = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    try:
        import matplotlib

        candidates.append(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    except ImportError:
        pass
    return next((c for c in candidates if c.is_file()), None)


def _restore_pillow_open() -> None:
    """Undo ultralytics' replacement of ``PIL.Image.open``.

    ultralytics (``ultralytics/utils/patches.py``) wraps ``PIL.Image.open`` for the whole process
    so that a file Pillow cannot identify triggers a pip install of a HEIF plugin; offline that
    raises ``ModuleNotFoundError`` from every ``Image.open`` of a non-image instead of Pillow's
    ``UnidentifiedImageError``. ShelfTally decodes HEIF with its own ``heif`` extra.
    """
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:  # pragma: no cover - a future ultralytics without the module
        return
    original = getattr(patches, "_image_open", None)
    if callable(original) and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def configure_offline(config_dir: Path | None = None, *, ultralytics: bool = True) -> Path:
    """Set the environment and ultralytics settings for offline use; idempotent.

    Args:
        config_dir: where ultralytics keeps its settings, fonts, datasets and runs. Default:
            ``$SHELFTALLY_ULTRALYTICS_DIR`` or ``~/.cache/shelftally/ultralytics``.
        ultralytics: also write ultralytics' settings (False: only the environment, for code
            that runs OpenVINO or ONNX Runtime without ultralytics installed).

    Returns:
        The config directory used.

    Raises:
        MissingDependencyError: ``ultralytics`` is True and ultralytics is not installed (extra ``train``).
    """
    if "dir" in _DONE:
        return _DONE["dir"]
    root = config_dir or Path(
        os.environ.get("SHELFTALLY_ULTRALYTICS_DIR", Path.home() / ".cache" / "shelftally" / "ultralytics")
    )
    root.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "false")
    os.environ["YOLO_CONFIG_DIR"] = str(root)
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("OPENVINO_TELEMETRY_OPT_OUT", "1")
    fonts = root / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    source = _font_source()
    if source is not None:
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            if not (fonts / name).exists():
                shutil.copyfile(source, fonts / name)
    if not ultralytics:
        return root
    try:
        from ultralytics import settings
    except ImportError as error:
        raise MissingDependencyError(
            "training, export from .pt and evaluation need ultralytics: pip install 'shelftally[train]'"
        ) from error

    updates: dict[str, Any] = {
        "datasets_dir": str(root / "datasets"),
        "runs_dir": str(root / "runs"),
        "weights_dir": str(root / "weights"),
        "sync": False,
        "hub": False,
        "tensorboard": False,
        "wandb": False,
        "mlflow": False,
        "clearml": False,
        "comet": False,
        "dvc": False,
        "neptune": False,
        "raytune": False,
    }
    _restore_pillow_open()
    update: Callable[[dict[str, Any]], None] = settings.update  # untyped in ultralytics
    update({k: v for k, v in updates.items() if k in settings})
    _DONE["dir"] = root
    return root
