"""The command line's side of the switch's HTTP API: where the running switch is (the config's
`listen`, or --url), its key, and the one way every subcommand reports that it does not answer:
a line on stderr and exit status 3, as `systemctl status` does for a unit that is not running."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import config as config_mod
from ..config import DEFAULT_LISTEN, Config
from ..errors import ConfigError

NOT_RUNNING = 3
REFUSED = 1


class NotRunning(Exception):
    """Nothing usable answers at the switch's URL; report() says so, the same for every subcommand."""

    def __init__(self, url: str, reason: str, config_note: str | None = None) -> None:
        super().__init__(reason)
        self.url, self.reason, self.config_note = url, reason, config_note

    def report(self) -> int:
        print(f"llm-switch is not running at {self.url}: {self.reason}", file=sys.stderr)
        print("  (start it: systemctl --user start llm-switch; its log: journalctl --user -u llm-switch)",
              file=sys.stderr)
        if self.config_note:
            print(f"  {self.config_note}", file=sys.stderr)
        return NOT_RUNNING


class Refused(Exception):
    """The switch answered with an error: its message, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Switch:
    url: str
    key: str | None
    config: Config | None
    config_note: str | None  # why the config could not be read, when it could not

    @classmethod
    def from_args(cls, args) -> Switch:
        path = config_mod.find_path(getattr(args, "config", None))
        config, note = read_config(path)
        if config is not None:
            return cls(url_of(getattr(args, "url", None) or config.listen), admin_key(config), config, None)
        # a broken file still says where the switch listens (reload must reach it to refuse the file)
        listen, key = _what_a_broken_config_says(path)
        try:
            url = url_of(getattr(args, "url", None) or listen or DEFAULT_LISTEN)
        except ConfigError:  # its listen is what is broken
            url = url_of(DEFAULT_LISTEN)
        return cls(url, key, None, note)

    def open(self, method: str, path: str, timeout: float | None = 30.0):
        """The HTTP response to METHOD path; Refused on an error answer, NotRunning when none."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise Refused(error_message(e)) from None
        except (OSError, ValueError) as e:  # URLError, refused, timed out, a malformed --url
            raise NotRunning(self.url, reason_of(e), self.config_note) from None

    def json(self, method: str, path: str, timeout: float | None = 30.0) -> Any:
        with self.open(method, path, timeout) as resp:
            try:
                body = resp.read()
            except OSError as e:  # the connection dropped, or timed out, mid-answer
                raise NotRunning(self.url, reason_of(e), self.config_note) from None
        try:
            return json.loads(body)
        except ValueError:  # something else listens there
            raise NotRunning(self.url, f"{path} did not answer with JSON: something else listens there",
                             self.config_note) from None


def read_config(explicit: str | os.PathLike | None) -> tuple[Config | None, str | None]:
    path = config_mod.find_path(explicit) if not isinstance(explicit, Path) else explicit
    try:
        return config_mod.load(path), None
    except ConfigError as e:
        return None, f"config: {e.message}"


def _what_a_broken_config_says(path: Path) -> tuple[str | None, str | None]:
    """`listen` and the first plain api_keys entry of a file the config parser refused, if readable."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    listen = raw.get("listen")
    if isinstance(raw.get("server"), dict):  # the seed's form
        server = raw["server"]
        listen = f"{server.get('host', '127.0.0.1')}:{server.get('port', 3002)}"
    keys = raw.get("api_keys")
    keys = [keys] if isinstance(keys, (str, dict)) else keys if isinstance(keys, list) else []
    plain = [k if isinstance(k, str) else k.get("key") for k in keys
             if isinstance(k, str) or (isinstance(k, dict) and not k.get("models"))]
    key = next((k for k in plain if isinstance(k, str)), None)
    return (str(listen) if listen else None), key


def url_of(listen: str) -> str:
    """A URL to reach the daemon at its listen address or --url (a wildcard address means loopback)."""
    if "://" in listen:
        return listen.rstrip("/")
    host, port = config_mod.parse_listen(listen, "listen")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def admin_key(config: Config | None) -> str | None:
    """A configured key good for the switch's own routes (one without `models`), if it has keys."""
    return next((k.secret for k in config.api_keys if k.models is None), None) if config else None


def error_message(e: urllib.error.HTTPError) -> str:
    """The message of the switch's OpenAI-shaped error body, else the status line."""
    try:
        return json.loads(e.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {e.code} {e.reason}"


def reason_of(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    text = str(getattr(reason, "strerror", None) or reason)
    return "no answer in time" if isinstance(reason, TimeoutError) and not text else text
