"""The slow dashboard tests share the session's default run: `default_run` in tests/conftest.py."""
