"""Backends: servers, balancing, connections."""
