"""`llm-switch load | unload | logs MODEL`: ask the running switch (`POST /load/{model}`,
`POST /unload/{model}`, `GET /logs/{model}`), with the config's key where it has keys."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from ..config import DEFAULT_LISTEN
from .status import _config, _url_of

NOT_ANSWERING = 3


def run(args) -> int:
    config, config_note = _config(getattr(args, "config", None))
    url = (getattr(args, "url", None) or _url_of(config.listen if config else DEFAULT_LISTEN)).rstrip("/")
    key = next((k.secret for k in getattr(config, "api_keys", ()) if k.models is None), None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    model = urllib.parse.quote(args.model, safe="")
    if args.command == "logs":
        query = urllib.parse.urlencode({"lines": args.lines, **({"follow": "1"} if args.follow else {})})
        request = urllib.request.Request(f"{url}/logs/{model}?{query}", headers=headers)
        timeout = None if args.follow else 30
    else:
        request = urllib.request.Request(f"{url}/{args.command}/{model}", method="POST", headers=headers)
        timeout = None  # a load takes as long as the model takes (health_timeout bounds it)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if args.command == "logs":
                return _print_lines(resp, args.model)
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        print(f"llm-switch: {args.command} {args.model}: {_error_message(e)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"llm-switch does not answer at {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        if config_note:
            print(config_note, file=sys.stderr)
        return NOT_ANSWERING
    except KeyboardInterrupt:
        return 130
    if args.command == "load":
        m = answer.get("model") or {}
        print(f"{answer.get('loaded')}: {m.get('state')}" + (f", loaded in {m['load_s']:.2f} s" if m.get("load_s") else ""))
    else:
        stopped = answer.get("unloaded") or []
        print(f"unloaded {', '.join(stopped)}" if stopped else f"{args.model} was not running")
    return 0


def _print_lines(resp, model: str) -> int:
    seen = False
    for raw in resp:  # line by line, as the switch sends them
        sys.stdout.write(raw.decode(errors="replace"))
        sys.stdout.flush()
        seen = True
    if not seen:
        unit = resp.headers.get("X-Unit", "its unit")
        print(f"(no journal lines for {model}'s unit {unit}; see `journalctl --user -u {unit}`)", file=sys.stderr)
    return 0


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
        return body["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {e.code} {e.reason}"
