"""TCP mode: TLS-terminated byte relay to a backend."""
