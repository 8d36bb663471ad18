"""Shared pytest set-up: strict extension loading and deterministic seeds."""

import os

# Tests run strict: a broken compiled extension must fail loudly, never fall back silently.
os.environ.setdefault("COAR_REQUIRE_EXT", "1")
