"""Sans-IO protocol code: it takes bytes or events and returns bytes or events."""
