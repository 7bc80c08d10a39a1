"""MkDocs hooks: the settings and CLI pages are generated from the code at build time.

``settings.md`` and ``cli.md`` each hold a marker line; :func:`on_page_markdown` replaces it with
the table of every setting of :class:`workers.settings.Settings` (environment variable, type,
default, description and limits, from the pydantic fields) or with the reference of every
command of ``workers.cli:app``, written by Typer's own docs generator
(``typer --app app workers.cli utils docs``). A field without a description fails the build.

The functions are also used by ``tests/test_docs.py``.
"""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

SETTINGS_MARKER = "<!-- generated: settings -->"
CLI_MARKER = "<!-- generated: cli -->"
ENV_PREFIX = "SHELFTALLY_"
ENV_DELIMITER = "__"


@dataclass(frozen=True)
class SettingDoc:
    """One leaf setting as the settings page shows it.

    Attributes:
        env: environment variable, e.g. ``SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS``.
        path: dotted field path, e.g. ``reconcile.confirm_after_scans``.
        type: the field's type, written for a reader (``int``, ``"fp32" | "int8"``).
        default: the default value as text.
        description: the field's description.
        limits: the field's constraints (``>= 0``, ``< 300``), empty when none.
    """

    env: str
    path: str
    type: str
    default: str
    description: str
    limits: str


@dataclass(frozen=True)
class SettingsGroup:
    """A nested settings object (``models``, ``scan``, ...) or the top level (``path`` empty)."""

    path: str
    title: str
    description: str
    settings: tuple[SettingDoc, ...]


def _type_text(annotation: Any) -> str:
    """``Path | None`` -> ``Path | None``; ``Literal["a", "b"]`` -> ``"a" | "b"``; ``list[X]`` -> ``list[X]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _value_text(value: Any) -> str:
    """A default value as a user would write it in the environment (``None`` stays ``None``)."""
    if value is None:
        return "None"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int | Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return ",".join(_value_text(v) for v in value)
    return str(value)


def _limits_text(field: FieldInfo) -> str:
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}
    parts = []
    for item in field.metadata:
        for attribute, sign in signs.items():
            bound = getattr(item, attribute, None)
            if bound is not None:
                parts.append(f"{sign} {_value_text(bound)}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _first_paragraph(docstring: str | None) -> str:
    if not docstring:
        return ""
    return " ".join(docstring.strip().split("\n\n")[0].split())


def settings_groups(settings_cls: type[BaseModel] | None = None) -> list[SettingsGroup]:
    """Every setting of :class:`workers.settings.Settings`, top level first, then each nested object.

    Args:
        settings_cls: the settings class to document (default ``workers.settings.Settings``).

    Raises:
        ValueError: a field has no description (so the page cannot silently lose one).
    """
    if settings_cls is None:
        from workers.settings import Settings

        settings_cls = Settings

    def leaves(model: type[BaseModel], path: str) -> list[SettingDoc]:
        docs = []
        for name, field in model.model_fields.items():
            if _nested_model(field) is not None:
                continue
            if not field.description:
                raise ValueError(f"setting {path}{name} has no description (add Field(description=...))")
            env = ENV_PREFIX + ENV_DELIMITER.join([*filter(None, path.rstrip(".").split(".")), name]).upper()
            docs.append(SettingDoc(
                env=env, path=f"{path}{name}", type=_type_text(field.annotation),
                default=_value_text(_default(field)), description=field.description, limits=_limits_text(field),
            ))
        return docs

    groups = [SettingsGroup("", "Process", _first_paragraph(settings_cls.__doc__), tuple(leaves(settings_cls, "")))]
    for name, field in settings_cls.model_fields.items():
        nested = _nested_model(field)
        if nested is None:
            continue
        description = field.description or _first_paragraph(nested.__doc__)
        groups.append(SettingsGroup(name, f"`{name}`", description, tuple(leaves(nested, f"{name}."))))
    return groups


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_markdown() -> str:
    """The generated part of the settings page: one table per settings group."""
    out = []
    for group in settings_groups():
        out.append(f"## {group.title}\n")
        if group.description:
            sentence = group.description[0].upper() + group.description[1:]
            out.append(sentence if sentence.endswith(".") else f"{sentence}.")
            out.append("")
        out.append("| environment variable | type | default | description |")
        out.append("|---|---|---|---|")
        for s in group.settings:
            description = s.description + (f" ({s.limits})" if s.limits else "")
            out.append(f"| `{s.env}` | `{_cell(s.type)}` | `{_cell(s.default)}` | {_cell(description)} |")
        out.append("")
    return "\n".join(out)


def cli_markdown() -> str:
    """The generated part of the CLI page: Typer's Markdown reference of ``workers.cli:app``.

    Runs ``python -m typer --app app workers.cli utils docs --name shelftally`` (Typer's own docs
    generator) and drops its page title, which the page has.

    Raises:
        RuntimeError: the generator failed (its stderr is in the message).
    """
    command = [sys.executable, "-m", "typer", "--app", "app", "workers.cli", "utils", "docs",
               "--name", "shelftally", "--title", "shelftally"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"typer utils docs failed ({result.returncode}): {result.stderr.strip()}")
    lines = result.stdout.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise RuntimeError(f"unexpected output of typer utils docs: {result.stdout[:200]!r}")
    return "\n".join(lines[1:]).strip() + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: fill the generated pages."""
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_markdown())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    return markdown


# Allow `python docs/hooks.py settings|cli` to print a generated page part.
if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(settings_markdown() if sys.argv[1:] == ["settings"] else cli_markdown())  # noqa: T201
