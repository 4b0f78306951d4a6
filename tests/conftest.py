"""Shared test set-up: offline, telemetry off, Flower home inside the test session, real data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real CAMUS subset lives beside the checkout (../shared/data/camus), never in the repo.
CAMUS_ROOT = REPO.parent / "shared" / "data" / "camus"

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def camus_root() -> Path:
    """The real CAMUS 4CH ED/ES subset; tests that need it skip (saying why) where it is absent."""
    if not (CAMUS_ROOT / "database_nifti").is_dir():
        pytest.skip(f"real CAMUS subset not found at {CAMUS_ROOT} (expected ../shared/data/camus beside the repo)")
    return CAMUS_ROOT


@pytest.fixture(autouse=True)
def _flwr_home(tmp_path_factory, monkeypatch):
    """Flower keeps federations and state under FLWR_HOME: never the user's home in tests."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.getbasetemp() / "flwr_home"))
