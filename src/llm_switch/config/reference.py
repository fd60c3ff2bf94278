"""docs/configuration.md and config.schema.json, both written from config/schema.py's table.

    python -m llm_switch.config.reference [REPOSITORY]   # rewrites both files there

tests/test_config_reference.py fails when the committed files differ from what this writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from .schema import DIR_DEFAULTS, KINDS, MODEL, TOP, Key

SCHEMA_FILE = "config.schema.json"
DOC_FILE = "docs/configuration.md"
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"

_INTRO = """\
# Configuration reference

<!-- Generated from src/llm_switch/config/schema.py by `python -m llm_switch.config.reference`;
     edit the table there, not this file. -->

llm-switch reads `~/.config/llm-switch/config.yaml` (or `--config FILE`, or `$LLM_SWITCH_CONFIG`).
`llm-switch check` prints every problem of a config at once, one a line, as
`FILE:LINE: key.path: message`, and exits non-zero; `serve` and a reload refuse such a config with
the same lines. Editors that speak the YAML language server complete and check the keys through
[`config.schema.json`](../config.schema.json), which the shipped config.yaml names in its first line.

- **Sizes** take `K`, `M`, `G` or `T`, with or without `B` or `iB`, in any case: all are powers of
  1024 (`8G`, `8gb`, `8GiB` and `8Gi` are the same). A number without a unit is refused
  (`memory: 6` would be 6 bytes).
- **Durations** are seconds, or a number with `ms`, `s`, `m` or `h` (`90`, `90s`, `10m`, `2h`).
- A model's `cmd` must not hold llama-swap macros such as `${PORT}` (`llm-switch import` converts a
  llama-swap config), and its `--port` must be its url's port.
"""


def _value(text: str | None):
    return None if text is None else yaml.safe_load(text)


def _section(title: str, intro: str, keys: tuple[Key, ...], prefix: str = "") -> list[str]:
    out = [f"## {title}", "", intro, ""]
    for key in keys:
        kind, unit, _ = KINDS[key.kind]
        kind = f"one of {', '.join(key.choices)}" if key.choices else kind
        default = f"`{key.default}`" if key.default is not None else key.default_doc
        facts = [f"type: {kind}", f"default: {default}"] + ([f"unit: {unit}"] if unit else [])
        out += [f"### `{prefix}{key.name}`", "", key.doc, "", " · ".join(facts), "", "```yaml",
                f"{key.name}: {key.example}", "```", ""]
    return out


def markdown() -> str:
    lines = [_INTRO]
    lines += _section("Global keys", "At the top level of config.yaml.", TOP)
    lines += _section("Per model", "Under `models: {NAME: {…}}`. `NAME: UNIT` is short for `NAME: {unit: UNIT}`; "
                      "a model's health_timeout, min_loaded, idle_unload, prompt_cache and loading_progress "
                      "override the global ones.", MODEL, "models.NAME.")
    lines += _section("models_defaults", "How the models of `models_dir` run.", DIR_DEFAULTS, "models_defaults.")
    return "\n".join(lines).rstrip() + "\n"


def _property(key: Key) -> dict:
    schema = dict(KINDS[key.kind][2])
    if key.choices:
        schema = {"enum": [*key.choices, *([False] if "off" in key.choices else [])]}  # YAML reads off as false
    schema["description"] = key.doc
    if key.default is not None:
        schema["default"] = _value(key.default)
    schema["examples"] = [_value(key.example)]
    return schema


def _object(keys: tuple[Key, ...], **more) -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {key.name: _property(key) for key in keys}, **more}


def json_schema() -> dict:
    model = _object(MODEL, oneOf=[{"required": ["unit"]}, {"required": ["cmd"]}, {"required": ["any_of"]}])
    top = _object(TOP)
    top["properties"]["models"].update(
        {"type": "object", "propertyNames": {"pattern": _MODEL_NAME},
         "additionalProperties": {"anyOf": [{"type": "string", "pattern": r"\.service$"}, model]}})
    top["properties"]["models_defaults"].update(_object(DIR_DEFAULTS))
    return {"$schema": "http://json-schema.org/draft-07/schema#",  # what editors (yaml-language-server) read best
            "title": "llm-switch config.yaml", **top}


def files() -> dict[str, str]:
    """{path in the repository: text} of the generated files."""
    return {DOC_FILE: markdown(), SCHEMA_FILE: json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"}


def main(root: str = ".") -> None:
    for name, text in files().items():
        (Path(root) / name).write_text(text, encoding="utf-8")
        print(f"wrote {Path(root) / name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
