"""`llm-switch import PATH`: a llama-swap config.yaml as an llm-switch config on stdout, and each
key that could not be carried over, with the reason, on stderr (cli/llama_swap.py maps them)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..errors import ConfigError
from .llama_swap import convert


def run(args) -> int:
    path = Path(args.path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"llm-switch import: cannot read {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    try:
        imported = convert(text, os.environ, shutil.which)
    except ConfigError as e:
        print(f"llm-switch import: {path}: {e.message}", file=sys.stderr)
        return 2
    sys.stdout.write(imported.text(str(path.absolute())))
    sys.stdout.flush()  # the config first, then what it lacks
    if imported.notes:
        print(f"Not carried over from {path} ({len(imported.notes)}):", file=sys.stderr)
        for note in imported.notes:
            print(f"  {note}", file=sys.stderr)
    return 0
