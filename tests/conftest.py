"""Shared test set-up. Real components only: servers are started for real and torn down by PID."""
from __future__ import annotations

import os
import tempfile

# Ray 2.60 turns token auth on by default; local runs and tests disable it (DESIGN.md section 2).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process Prefect runs use a throw-away home (ephemeral server, its own SQLite database).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="finr1-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# --- fixtures (add yours below, in small blocks) ---------------------------------------------
