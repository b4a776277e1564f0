"""Runnable examples of sidecars; each one is exercised by a test in ``tests/examples``."""
