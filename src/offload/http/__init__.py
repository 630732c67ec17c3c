"""HTTP mode: the request path (client connection, exchanges, backend pool, redirects)."""
