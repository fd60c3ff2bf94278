"""`llm-switch load | unload [MODEL] | logs MODEL | reload`: ask the running switch
(`POST /load/{model}`, `POST /unload[/{model}]`, `GET /logs/{model}`, `POST /reload`)."""

from __future__ import annotations

import sys
import urllib.parse

from .client import Switch


def run(args) -> int:
    switch = Switch.from_args(args)
    if args.command == "logs":
        return _logs(switch, args)
    if args.command == "reload":
        return _reload(switch)
    model = urllib.parse.quote(args.model, safe="") if args.model else None
    if args.command == "load":
        # a load takes as long as the model takes (health_timeout bounds it)
        answer = switch.json("POST", f"/load/{model}", timeout=None)
        m = answer.get("model") or {}
        loaded = f", loaded in {m['load_s']:.2f} s" if m.get("load_s") else ""
        print(f"{answer.get('loaded')}: {m.get('state')}{loaded}")
        return 0
    stopped = switch.json("POST", f"/unload/{model}" if model else "/unload", timeout=None).get("unloaded") or []
    if stopped:
        print(f"unloaded {', '.join(stopped)}")
    else:
        print(f"{args.model} was not running" if args.model else "no model was running")
    return 0


def _logs(switch: Switch, args) -> int:
    query = urllib.parse.urlencode({"lines": args.lines, **({"follow": "1"} if args.follow else {})})
    model = urllib.parse.quote(args.model, safe="")
    with switch.open("GET", f"/logs/{model}?{query}", timeout=None if args.follow else 30) as resp:
        seen = False
        for raw in resp:  # line by line, as the switch sends them
            sys.stdout.write(raw.decode(errors="replace"))
            sys.stdout.flush()
            seen = True
        if not seen:
            unit = resp.headers.get("X-Unit", "its unit")
            print(f"(no journal lines for {args.model}'s unit {unit}; see `journalctl --user -u {unit}`)",
                  file=sys.stderr)
    return 0


def _reload(switch: Switch) -> int:
    """The switch reads its config file anew; a refused one is an error answer (Refused)."""
    outcome = switch.json("POST", "/reload", timeout=None)
    print(f"reloaded {outcome.get('config')}: {outcome.get('message')}")
    for note in outcome.get("notes") or ():
        print(f"  {note}")
    return 0
