"""Shared pytest setup: quiet TensorFlow, repository paths."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_FIXTURES = os.path.join(os.path.dirname(REPO_ROOT), "shared", "fixtures")
