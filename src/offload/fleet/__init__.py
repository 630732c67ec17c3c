"""Fleet mode: offload instances sharing ticket keys, bans and a node registry through Redis
(docs/fleet.md). Nothing here runs on a worker's request path."""
