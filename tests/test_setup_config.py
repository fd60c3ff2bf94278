"""The config.yaml setup.sh writes is the checkout's config.yaml, word for word, with the default
choices; setup.sh's own write_config runs here (sourced: its functions, not its main)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llm_switch.config import load

REPO = Path(__file__).resolve().parent.parent

# the defaults of settle_addresses; install_file copies (the manifest is not this test's subject)
_WRITE = """
source "$1/setup.sh"
init_globals
LISTEN=127.0.0.1:3002 BASE_URL=http://127.0.0.1:3002 BACKEND_PORT=3004 EMBEDDING_PORT=3005
DEMO=$3 LAN=$4 API_KEY_FILE=$2/api-key STAGE=$2 CONF_DIR=$2/conf
if [ "$DEMO" = 1 ]; then MODELS=("${DEMO_MODELS[@]}"); else MODELS=("${REAL_MODELS[@]}"); fi
install_file() { mkdir -p "$(dirname "$2")" && cp "$1" "$2"; }
write_config
"""


def setup_config(tmp_path: Path, demo: bool = False, lan: bool = False) -> Path:
    subprocess.run(["bash", "-c", _WRITE, "_", str(REPO), str(tmp_path), str(int(demo)), str(int(lan))],
                   check=True, capture_output=True, text=True, timeout=60)
    return tmp_path / "conf" / "config.yaml"


def test_setup_writes_the_shipped_config(tmp_path):
    written = setup_config(tmp_path)
    assert written.read_text() == (REPO / "config.yaml").read_text()
    # the schema its first line names is installed beside it
    assert (written.parent / "config.schema.json").read_text() == (REPO / "config.schema.json").read_text()


def test_the_shipped_config_has_the_readmes_aliases():
    config = load(REPO / "config.yaml")
    assert config.resolve("coder").name == "qwen3-coder-flash"
    assert config.resolve("thinker").name == "qwen3-thinking"
    assert config.warnings == ()


@pytest.mark.parametrize("demo, lan", [(True, False), (False, True)])
def test_setups_other_configs_pass_the_parser(tmp_path, demo, lan):
    (tmp_path / "api-key").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "api-key").chmod(0o600)
    written = setup_config(tmp_path, demo, lan)
    written.chmod(0o600)
    config = load(written)
    assert config.models and config.warnings == ()
    assert written.read_text().startswith("# yaml-language-server: $schema=./config.schema.json\n")
