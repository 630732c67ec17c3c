"""Processes and sockets: supervisor, workers, listeners."""
