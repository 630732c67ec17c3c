"""Security at the edge, as sans-IO building blocks: rate and connection limits, automatic bans.

Nothing here touches a socket or reads a clock; every call that depends on time takes ``now``
(monotonic seconds, normally ``loop.time()``). The listener and the HTTP path feed events in
and act on the decisions that come back, which name the limit or ban that fired so every
refusal can be counted and logged.
"""
