"""Entry points the tests run as subprocesses (`python -m tests.scripts.NAME ...`): not test modules."""
