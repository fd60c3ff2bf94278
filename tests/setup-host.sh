#!/usr/bin/env bash
# Everything the tests need on a fresh Debian/Ubuntu machine, as root: Debian's packages, then the
# project in .venv with its test extra. Safe to run again; installs only what is missing.
#
# The tests run real parts: a private `systemd --user` on its own D-Bus (systemd,
# dbus-user-session, util-linux's unshare/nsenter), real llama-server processes from the pinned test
# wheel (needs libgomp1), the npm `openai` package under Node, tiny GGUF models made on the fly,
# and a headless Chromium for the web page.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

need=()
[ -x /lib/systemd/systemd ] || need+=(systemd)
command -v dbus-daemon >/dev/null || need+=(dbus-user-session)
[ -e /usr/lib/systemd/user/dbus.socket ] || need+=(dbus-user-session)
command -v unshare >/dev/null && command -v nsenter >/dev/null || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)  # setup.sh's tests make venvs too
ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1' || need+=(libgomp1)
command -v curl >/dev/null || need+=(curl)  # setup.sh --demo prints curl commands the tests run
if [ -f tests/node/package.json ] && ! command -v npm >/dev/null; then need+=(nodejs npm); fi
command -v chromium >/dev/null || need+=(chromium)  # the web page's tests drive it (tests/cdp.py)

if [ ${#need[@]} -gt 0 ]; then
    echo "setup-host: installing ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
echo "setup-host: ready; run the tests with: .venv/bin/python -m pytest"
