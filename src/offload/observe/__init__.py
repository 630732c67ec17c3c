"""Logs, counters and (later) metrics."""
