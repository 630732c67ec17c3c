"""offload: a TLS offloading proxy (TLS termination in front of TCP and HTTP backends)."""

__version__ = "0.1.0"
