"""Runnable examples: ``python -m fastembed.examples.<name>``."""
