"""The suite's pytest setup. The fixtures and helpers live in tests/support (its __init__ lists
them); the fault tests (units killed, the bus lost, hostile clients, broken backends, shutdown)
in tests/faults.

Nothing skips: a part that cannot be found or started fails the test with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `support`, for tests/faults too
pytest.register_assert_rewrite("support")

pytest_plugins = ["support.fixtures", "support.markers"]
