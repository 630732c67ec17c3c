"""The worker's ban list and offence batch; the supervisor's BanHub between them."""

from __future__ import annotations

from offload.config.model import BansConfig
from offload.security.ban_list import MAX_BATCH, BannedClients, OffenceBatch
from offload.server.ban_hub import BanHub
from offload.server.control import Offences


def test_banned_until_the_deadline_then_forgotten() -> None:
    bans = BannedClients()
    assert not bans.banned("192.0.2.1", 0.0)
    bans.update((("192.0.2.1", 100.0), ("2001:db8:1:2::/64", 100.0)), ())
    assert bans.banned("192.0.2.1", 99.9)
    assert bans.banned("::ffff:192.0.2.1", 99.9)  # the same client on a dual-stack socket
    assert bans.banned("2001:db8:1:2::77", 50.0)  # IPv6 by /64
    assert not bans.banned("192.0.2.2", 50.0)
    assert not bans.banned("not an address", 50.0)
    assert not bans.banned("192.0.2.1", 100.0)
    assert len(bans) == 1
    bans.update((), ("2001:db8:1:2::/64",))
    assert not bans.banned("2001:db8:1:2::77", 50.0)


def test_offence_batch_counts_pairs_and_stays_bounded() -> None:
    batch = OffenceBatch()
    assert batch.add("192.0.2.1", "limit_hit") is True
    assert batch.add("192.0.2.1", "limit_hit") is False
    batch.add("192.0.2.1", "rule_denied")
    for index in range(MAX_BATCH + 10):
        batch.add(f"10.{index // 65536}.{index // 256 % 256}.{index % 256}", "limit_hit")
    reports, dropped = batch.take()
    assert reports[0] == ("192.0.2.1", "limit_hit", 2)
    assert len(reports) == MAX_BATCH and dropped == 12
    assert batch.take() == ((), 0)
    assert batch.add("192.0.2.1", "limit_hit") is True


def test_hub_bans_once_the_threshold_is_reached_across_workers() -> None:
    hub = BanHub(BansConfig.model_validate({"threshold": 5, "window": "1m", "ban_time": "10m",
                                         "allow": ["198.51.100.0/24"]}))
    # Two workers, each below the threshold on its own.
    assert hub.offences(Offences((("192.0.2.9", "handshake_failure", 3),)), now=10.0) == []
    (ban,) = hub.offences(Offences((("192.0.2.9", "rule_denied", 3),
                                    ("198.51.100.7", "rule_denied", 50))), now=11.0)
    assert ban.client == "192.0.2.9" and ban.until == 611.0 and ban.count == 5
    assert hub.total == 1
    assert hub.current(12.0).added == (("192.0.2.9", 611.0),)
    assert hub.unban("192.0.2.9") == "192.0.2.9"
    assert hub.unban("192.0.2.9") is None
    assert hub.current(12.0).added == ()
