"""Where the shared real data lives: beside the checkout (as CI has it), else the workplace's copy."""

from __future__ import annotations

from pathlib import Path

_CANDIDATES = (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))
SHARED_DATA = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
LLMROUTER = SHARED_DATA / "llmrouter"
ROUTELLM = SHARED_DATA / "routellm"
