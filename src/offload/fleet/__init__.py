"""Fleet mode: several offload instances sharing state through Redis (docs/fleet.md)."""
