"""Tests of gitlab_es_pipeline.

A step that fails transiently is retried once, after 0.1 s (in production: 3 times, from 60 s
doubling), so that fault tests see the retry without waiting for it. Set before the asset
definitions are imported: they read it once.
"""

import os

os.environ.setdefault("INDEX_STEP_RETRIES", "1")
os.environ.setdefault("INDEX_STEP_RETRY_DELAY_SECONDS", "0.1")
