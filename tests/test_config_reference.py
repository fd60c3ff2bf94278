"""The parser, docs/configuration.md and config.schema.json come from one table
(config/schema.py): these tests fail when the three disagree."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from llm_switch.config import models_dir, parse, reference
from llm_switch.config.schema import DIR_DEFAULTS, MODEL, TOP
from llm_switch.errors import ConfigError
from schema_check import problems

load_mod = importlib.import_module("llm_switch.config.load")  # the package's `load` is the function
REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / reference.SCHEMA_FILE).read_text())
MODEL_SCHEMA = SCHEMA["properties"]["models"]["additionalProperties"]["anyOf"][1]


@pytest.mark.parametrize("name", [reference.DOC_FILE, reference.SCHEMA_FILE])
def test_the_committed_files_are_generated(name):
    """After a change to config/schema.py: python -m llm_switch.config.reference"""
    assert (REPO / name).read_text() == reference.files()[name], f"regenerate {name}"


def test_the_parser_knows_exactly_the_schemas_keys():
    assert set(SCHEMA["properties"]) == load_mod._TOP_KEYS
    assert set(MODEL_SCHEMA["properties"]) == load_mod._MODEL_KEYS
    assert set(SCHEMA["properties"]["models_defaults"]["properties"]) == models_dir._KEYS


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME with what the examples name: a key file and a folder with one GGUF file."""
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / ".config" / "llm-switch" / "api-key"
    key.parent.mkdir(parents=True)
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o600)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF" + bytes(28))
    return tmp_path


def _config(top: dict | None = None, model: dict | None = None, dir_defaults: dict | None = None) -> dict:
    raw = {"models": {"coder": {"unit": "coder.service", **(model or {})}}, **(top or {})}
    if dir_defaults is not None:
        raw.update(models_dir="~/models", models_defaults={"llama_server": "/usr/bin/llama-server", **dir_defaults})
    if "cmd" in raw["models"]["coder"]:
        del raw["models"]["coder"]["unit"]
    if "any_of" in raw["models"]["coder"]:  # a virtual model: its members are models of their own
        del raw["models"]["coder"]["unit"]
        raw["models"].update({m: f"{m}.service" for m in raw["models"]["coder"]["any_of"]})
    return raw


def _examples():
    for key in TOP:
        raw = _config({"allow_unauthenticated": True, key.name: yaml.safe_load(key.example)},
                      dir_defaults={} if key.name == "models_dir" else None)
        yield pytest.param(key, {**raw, key.name: yaml.safe_load(key.example)}, id=key.name)
    yield from (pytest.param(key, _config(model={key.name: yaml.safe_load(key.example)}), id=f"models.{key.name}")
                for key in MODEL)
    yield from (pytest.param(key, _config(dir_defaults={key.name: yaml.safe_load(key.example)}),
                             id=f"models_defaults.{key.name}") for key in DIR_DEFAULTS)


@pytest.mark.parametrize("key, raw", list(_examples()))
def test_every_example_passes_the_parser_and_the_schema(home, key, raw):
    parse(yaml.safe_dump(raw))
    assert problems(SCHEMA, raw) == []


def _defaults():
    for key in TOP:
        if key.default is not None:
            yield pytest.param(_config(), _config({key.name: yaml.safe_load(key.default)}), id=key.name)
    for key in MODEL:
        if key.default is not None:
            yield pytest.param(_config(), _config(model={key.name: yaml.safe_load(key.default)}),
                               id=f"models.{key.name}")
    for key in DIR_DEFAULTS:
        if key.default is not None:
            yield pytest.param(_config(dir_defaults={}), _config(dir_defaults={key.name: yaml.safe_load(key.default)}),
                               id=f"models_defaults.{key.name}")


@pytest.mark.parametrize("without, given", list(_defaults()))
def test_every_documented_default_is_the_parsers(home, without, given):
    assert parse(yaml.safe_dump(without)) == parse(yaml.safe_dump(given))


def test_the_shipped_config_fits_the_schema():
    assert problems(SCHEMA, yaml.safe_load((REPO / "config.yaml").read_text())) == []


@pytest.mark.parametrize("raw", [
    _config(model={"memory": 6}), _config(model={"aliases": "c, d"}), _config({"health_timeout": "soon"}),
    _config({"ttl": 60}), _config(model={"proxy": "http://127.0.0.1:3004"}), _config({"memory_budget": "lots"}),
    _config({"listen": 3002}), _config(model={"unit": "coder"}), _config({"loading_progress": "loud"}),
], ids=lambda raw: yaml.safe_dump(raw, default_flow_style=True).strip())
def test_what_the_parser_refuses_the_schema_refuses(raw):
    with pytest.raises(ConfigError):
        parse(yaml.safe_dump(raw))
    assert problems(SCHEMA, raw) != []
