"""The command line's side of the switch's HTTP API: where the running switch is (the config's
`listen`, or --url), its key, and the one way every subcommand reports that it does not answer:
a line on stderr and exit status 3, as `systemctl status` does for a unit that is not running."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

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
        config, note = read_config(getattr(args, "config", None))
        url = getattr(args, "url", None) or url_of(config.listen if config else DEFAULT_LISTEN)
        return cls(url.rstrip("/"), admin_key(config), config, note)

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


def read_config(explicit: str | None) -> tuple[Config | None, str | None]:
    path = config_mod.find_path(explicit)
    try:
        return config_mod.load(path), None
    except ConfigError as e:
        return None, f"config: {e.message}"


def url_of(listen: str) -> str:
    """A URL to reach the daemon at its listen address (a wildcard address means loopback)."""
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
