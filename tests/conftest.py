"""Shared pytest setup. Area fixtures live in tests/fixtures_*.py and are registered here."""
import os

# No test may reach a model hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures_vlm",
    "tests.fixtures_server",
    "tests.fixtures_targets",
]
