"""The documentation: a short README, a site whose pages exist, and generated pages that list
every setting and every command of the code as it is."""

from __future__ import annotations

import html
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import typer.main
import yaml
from pydantic import BaseModel, Field

from workers.cli import app
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README_WORD_LIMIT = 1500

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs / mkdocs-material not installed (pip install -e '.[docs]')",
)


def _hooks() -> ModuleType:
    """docs/hooks.py, the MkDocs hooks that generate the settings and CLI pages (not a package)."""
    name = "shelftally_docs_hooks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _setting_env_names(model: type[BaseModel] = Settings, prefix: str = "SHELFTALLY_") -> Iterator[str]:
    """Every leaf setting's environment variable, walked from the pydantic fields."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _setting_env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def _command_paths(command: object, path: str = "shelftally") -> Iterator[str]:
    """``shelftally``, ``shelftally db``, ``shelftally db upgrade``, ... from the Typer app's command tree."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _command_paths(sub, f"{path} {name}")


def test_readme_is_under_the_word_limit() -> None:
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())  # what `wc -w` counts
    assert 0 < words < README_WORD_LIMIT, f"README.md has {words} words; the limit is {README_WORD_LIMIT}"


def test_readme_keeps_the_two_commands_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "./scripts/demo.sh" in readme and "./scripts/test.sh" in readme
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def _nav_files(nav: list[object]) -> Iterator[str]:
    for entry in nav:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from _nav_files(value) if isinstance(value, list) else [str(value)]


def test_every_nav_entry_is_a_file_and_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = list(_nav_files(config["nav"]))
    missing = [name for name in nav if not (ROOT / "docs" / name).is_file()]
    assert not missing, f"mkdocs.yml nav names files that do not exist: {missing}"
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == set(nav), f"pages not in the nav: {sorted(pages - set(nav))}"


def test_settings_generator_lists_every_setting_with_type_default_and_description() -> None:
    groups = _hooks().settings_groups()
    rows = {s.env: s for group in groups for s in group.settings}
    assert set(rows) == set(_setting_env_names())
    confirm = rows["SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS"]
    assert (confirm.type, confirm.default, confirm.limits) == ("int", "2", ">= 1")
    backend = rows["SHELFTALLY_MODELS__BACKEND"]
    assert (backend.type, backend.default) == ('"onnx" | "openvino" | "torch" | "tensorrt"', "onnx")
    assert rows["SHELFTALLY_ALERTS__CHANNELS"].default == "log"
    assert all(s.description for s in rows.values())


def test_settings_generator_refuses_a_field_without_description() -> None:
    class Nested(BaseModel):
        documented: int = Field(1, description="a documented field")
        undocumented: int = 2

    class Fake(BaseModel):
        """A fake settings class."""

        nested: Nested = Field(default_factory=Nested, description="nested settings")

    with pytest.raises(ValueError, match=r"nested\.undocumented has no description"):
        _hooks().settings_groups(Fake)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``./scripts/test.sh`` builds it: ``mkdocs build --strict``."""
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


@needs_mkdocs
@pytest.mark.slow
def test_built_settings_page_lists_every_setting(built_site: Path) -> None:
    page = html.unescape((built_site / "settings" / "index.html").read_text(encoding="utf-8"))
    missing = [name for name in _setting_env_names() if f"<code>{name}</code>" not in page]
    assert not missing, f"settings page lacks {missing}"


@needs_mkdocs
@pytest.mark.slow
def test_built_cli_reference_lists_every_command(built_site: Path) -> None:
    page = html.unescape((built_site / "cli" / "index.html").read_text(encoding="utf-8"))
    paths = list(_command_paths(typer.main.get_command(app)))
    assert "shelftally scan" in paths and "shelftally adjust approve" in paths
    missing = [path for path in paths[1:] if f"<code>{path}</code>" not in page]
    assert not missing, f"CLI reference lacks {missing}"
    assert "--captured-at" in page  # options are there too, not only the command names
