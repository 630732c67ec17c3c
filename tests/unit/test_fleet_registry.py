"""The node registry without sockets: heartbeats parsed defensively, nodes seen in the last
minute, the odd configuration flagged."""

from __future__ import annotations

from offload.fleet.registry import NodeBeat, decode_beat, fleet_view, stale


def beat(node: str, seen: float, config: str = "aaaa") -> NodeBeat:
    return NodeBeat(node, "1.0", config, 42, seen, 12.0, 0.4)


def test_beats_round_trip_and_garbage_is_skipped() -> None:
    one = beat("edge-1", 100.0)
    assert decode_beat(one.encode()) == one
    assert decode_beat(b"not json") is None
    assert decode_beat(b'{"node": "x"}') is None


def test_view_lists_recent_nodes_and_flags_the_odd_config() -> None:
    now = 1000.0
    beats = [beat("c", now - 5, "old"), beat("a", now - 1), beat("b", now - 59.9),
             beat("gone", now - 60)]
    view = fleet_view(beats, now, me="a")
    assert [n.node for n in view] == ["a", "b", "c"]
    assert [n.config_differs for n in view] == [False, False, True]
    assert view[0].this_node and not view[1].this_node


def test_on_a_tie_this_nodes_config_is_the_reference() -> None:
    view = fleet_view([beat("a", 10.0, "x"), beat("b", 10.0, "y")], 11.0, me="b")
    assert {n.node: n.config_differs for n in view} == {"a": True, "b": False}


def test_silent_nodes_are_forgotten_after_a_day() -> None:
    assert stale([beat("a", 0.0), beat("b", 50_000.0)], 86_400.0) == ["a"]


def test_hostile_beats_are_refused_without_raising() -> None:
    """A beat seen at Infinity would be listed for ever (and /api/fleet would not be JSON)."""
    base = '{"node": "x", "version": "1", "config_hash": "h", "pid": 1, '
    for bad in [base + '"seen": Infinity}', base + '"seen": NaN}',
                base + '"seen": 1, "latency_ms": Infinity}',
                base + '"seen": ' + "9" * 400 + "}", base + '"seen": 1, "pid": 1e999}',
                "[" * 100_000, base + '"seen": 1, "version": "' + "v" * 5000 + '"}']:
        assert decode_beat(bad.encode()) is None, bad[:60]
    assert stale([beat("future", 10 * 86400.0)], 100.0) == ["future"]
