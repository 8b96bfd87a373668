"""Micro-benchmarks: `python -m pytest bench/ --benchmark-only` (not part of the test run)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
