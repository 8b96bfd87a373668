"""Shared fixtures: backend checks, hypothesis profiles, real SQLite databases."""

from __future__ import annotations

import os

# S3 fixtures (SeaweedFS on 127.0.0.1) for every test module.
from conftest_s3 import _s3_session_bucket, s3_bucket, s3_new_bucket, s3_server  # noqa: E402,F401
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("expensive", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
