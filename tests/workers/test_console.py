"""Errors reach the operator verbatim: brackets in messages are text, not markup."""

from __future__ import annotations

import json

import pytest

from shelftally.errors import MissingDependencyError
from workers.console import print_error


@pytest.mark.parametrize("as_json", [False, True])
def test_error_text_with_brackets_is_printed_verbatim(capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    print_error(MissingDependencyError("training needs torch: pip install 'shelftally[train]' (see /tmp/we[/ird])"),
                as_json=as_json)
    captured = capsys.readouterr()
    assert "error (missing_dependency): training needs torch: pip install 'shelftally[train]' (see /tmp/we[/ird])" \
        in captured.err
    if as_json:
        assert json.loads(captured.out)["reason"] == "missing_dependency"
    else:
        assert captured.out == ""
