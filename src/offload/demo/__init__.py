"""The demo: a local CA, a localhost certificate and a small built-in backend."""
