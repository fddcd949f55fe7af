"""The configuration reference (issue 9): docs/configuration.md is generated from the pydantic
models, every setting has a description, and every default shown is the real one."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayguard import config_docs
from relayguard.config import Settings, load_text

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_setting_has_a_description():
    assert config_docs.undocumented() == [], (
        "add a one-line docstring under each of these fields in src/relayguard/config.py "
        "(and a class docstring for each section)")


def test_docs_configuration_md_is_the_generated_text():
    assert PAGE.read_text(encoding="utf-8") == config_docs.render(), (
        "docs/configuration.md is stale: run `python -m relayguard.config_docs > docs/configuration.md`")


def test_the_page_lists_every_key_once():
    text = PAGE.read_text(encoding="utf-8")
    for name, model, _ in config_docs.sections():
        assert text.count(f"\n## [{name}]\n") == 1
        for key in (model.model_fields if model else {}):
            assert f"| `{key}` |" in text.split(f"\n## [{name}]\n", 1)[1].split("\n## ", 1)[0], f"{name}.{key}"


@pytest.mark.parametrize("name,model", [(n, m) for n, m, _ in config_docs.sections() if m is not None])
def test_defaults_shown_are_the_defaults(name, model):
    """Each default, pasted into a file as shown, loads to the built-in value."""
    defaults = getattr(Settings(), name)
    for key, field in model.model_fields.items():
        shown = config_docs.default_text(field)
        if not shown.startswith("`"):
            continue  # a computed default (the host name)
        literal = shown.strip("`")
        loaded = getattr(load_text(f"[{name}]\n{key} = {literal}\n", "doc.toml"), name)
        assert getattr(loaded, key) == getattr(defaults, key), f"{name}.{key}: {literal}"
