"""The pure parts of `llm-switch add`: llama-server's flag table, the model file, config.yaml
edited as text. Table-driven; the flag table is also read from the real llama-server's --help."""

from __future__ import annotations

import pytest
import yaml

from llm_switch.cli import config_text, llama_flags
from llm_switch.cli import model_files as mf
from llm_switch.errors import ConfigError

HELP = """\
-c,    --ctx-size N                     size of the prompt context (default: 0, 0 = loaded from model)
                                        (env: LLAMA_ARG_CTX_SIZE)
-ngl,  --gpu-layers, --n-gpu-layers N   max. number of layers to store in VRAM
                                        (env: LLAMA_ARG_N_GPU_LAYERS)
--mmap, --no-mmap                       whether to memory-map model
                                        (env: LLAMA_ARG_MMAP)
-ot,   --override-tensor <tensor name pattern>=<buffer type>,...
                                        override tensor buffer type (env: LLAMA_ARG_OVERRIDE_TENSOR)
--embedding, --embeddings               restrict to only support embedding use case
                                        (env: LLAMA_ARG_EMBEDDINGS)
--temp N                                temperature (default: 0.8)
"""


def test_parse_help_finds_each_spelling_and_whether_it_takes_a_value():
    table = llama_flags.parse_help(HELP)
    assert table["-c"] == table["--ctx-size"] == llama_flags.Flag("LLAMA_ARG_CTX_SIZE", True)
    assert table["-ngl"] == table["--n-gpu-layers"] == llama_flags.Flag("LLAMA_ARG_N_GPU_LAYERS", True)
    assert table["--mmap"] == llama_flags.Flag("LLAMA_ARG_MMAP", False)
    assert "--no-mmap" not in table
    assert table["-ot"] == llama_flags.Flag("LLAMA_ARG_OVERRIDE_TENSOR", True)
    assert table["--embeddings"] == llama_flags.Flag("LLAMA_ARG_EMBEDDINGS", False)
    assert "--temp" not in table  # no variable


@pytest.mark.parametrize("args, env, rest", [
    ([], {}, []),
    (["-c", "8192"], {"LLAMA_ARG_CTX_SIZE": "8192"}, []),
    (["--ctx-size=8192", "-ngl", "99"], {"LLAMA_ARG_CTX_SIZE": "8192", "LLAMA_ARG_N_GPU_LAYERS": "99"}, []),
    (["--embeddings"], {"LLAMA_ARG_EMBEDDINGS": "true"}, []),
    (["--temp", "0.7", "--top-k", "20"], {}, ["--temp", "0.7", "--top-k", "20"]),
    (["--no-mmap", "--temp", "-1"], {}, ["--no-mmap", "--temp", "-1"]),
    (["-ot", "a=CPU", "-ot", "b=CPU"], {}, ["-ot", "a=CPU", "-ot", "b=CPU"]),  # twice: one variable holds one
    (["-ot", r".*blk\.3\.ffn=CPU"], {"LLAMA_ARG_OVERRIDE_TENSOR": r".*blk\.3\.ffn=CPU"}, []),
])
def test_split_args(args, env, rest):
    assert llama_flags.split_args(args, llama_flags.parse_help(HELP)) == (env, rest)


def test_the_real_llama_server_help_gives_the_variables_the_model_files_use(llama_server):
    text = llama_flags.help_text(llama_server[0], llama_server[1])
    assert text, "llama-server --help did not run"
    table = llama_flags.parse_help(text)
    for flag, env in [("-c", "LLAMA_ARG_CTX_SIZE"), ("-ngl", "LLAMA_ARG_N_GPU_LAYERS"),
                      ("--jinja", "LLAMA_ARG_JINJA"), ("-lv", "LLAMA_ARG_LOG_VERBOSITY"),
                      ("--override-tensor", "LLAMA_ARG_OVERRIDE_TENSOR"), ("-fa", "LLAMA_ARG_FLASH_ATTN"),
                      ("--port", "LLAMA_ARG_PORT"), ("-m", "LLAMA_ARG_MODEL")]:
        assert table[flag].env == env, flag
    assert table["-c"].takes_value and not table["--jinja"].takes_value


@pytest.mark.parametrize("name, ok", [
    ("my-model", True), ("Qwen3.5_9B", True), ("a", True),
    ("-x", False), ("a b", False), ("a/b", False), ("a@b", False), ("", False), ("x" * 101, False),
])
def test_check_name(name, ok):
    if ok:
        mf.check_name(name)
    else:
        with pytest.raises(ConfigError, match="model name"):
            mf.check_name(name)


def test_check_gguf(tmp_path):
    good, bad = tmp_path / "m.gguf", tmp_path / "x.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    bad.write_bytes(b"PK\x03\x04")
    mf.check_gguf(good)
    with pytest.raises(ConfigError, match="not a GGUF file"):
        mf.check_gguf(bad)
    with pytest.raises(ConfigError, match="no such file"):
        mf.check_gguf(tmp_path / "missing.gguf")


def test_env_text_quotes_what_systemd_would_read_otherwise(tmp_path):
    text = mf.env_text("m", tmp_path / "my model.gguf",
                       {"LLAMA_ARG_ALIAS": "m", "LLAMA_ARG_OVERRIDE_TENSOR": r"blk\.3=CPU"}, ["--temp", "0.7"])
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [f"LLAMA_ARG_MODEL='{tmp_path}/my model.gguf'", "LLAMA_ARG_ALIAS=m",
                     r"LLAMA_ARG_OVERRIDE_TENSOR='blk\.3=CPU'", "LLAMA_ARGS='--temp 0.7'"]
    with pytest.raises(ConfigError, match="splits LLAMA_ARGS at spaces"):
        mf.env_text("m", tmp_path / "m.gguf", {}, ["--chat-template", "a b"])
    with pytest.raises(ConfigError, match="single quote"):
        mf.env_text("m", tmp_path / "m.gguf", {"LLAMA_ARG_ALIAS": "it's"}, [])


CONFIG = """\
# my switch
listen: 127.0.0.1:3002   # here
models:                  # the models
  # the coder
  coder: llama-server@coder.service

  embed:
    unit: llama-server@embed.service   # its own
    url: http://127.0.0.1:3005
# after the models
preload: [coder]
"""


def test_add_keeps_every_comment_and_lands_inside_models():
    out = config_text.add_model(CONFIG, "mine", {"unit": "llama-server@mine.service",
                                                 "url": "http://127.0.0.1:3006", "aliases": ["m", "yes"]}, "note")
    assert out.startswith(CONFIG.split("# after")[0])
    assert out.endswith("# after the models\npreload: [coder]\n")
    assert "  mine:  # note\n    unit: llama-server@mine.service\n" in out
    assert yaml.safe_load(out)["models"]["mine"]["aliases"] == ["m", "yes"]  # "yes" stays a string
    assert config_text.remove_model(out, "mine") == CONFIG


def test_add_short_form_and_remove_give_back_the_same_text():
    out = config_text.add_model(CONFIG, "solo", {"unit": "llama-server@solo.service"}, "note")
    assert "  solo: llama-server@solo.service  # note\n" in out
    assert config_text.remove_model(out, "solo") == CONFIG
    assert "embed" not in yaml.safe_load(config_text.remove_model(CONFIG, "embed"))["models"]


@pytest.mark.parametrize("text, message", [
    ("listen: 127.0.0.1:3002\n", "no top-level `models:`"),
    ("models: {a: llama-server@a.service}\n", "one line"),
])
def test_layouts_add_cannot_edit_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        config_text.add_model(text, "m", {"unit": "llama-server@m.service"}, "note")

