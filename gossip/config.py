"""Timing profiles for the gossip protocol, in the manner of memberlist's `DefaultLANConfig`.

A `GossipConfig` is a frozen bag of numbers; every state machine in `gossip` reads its
timing from one, so the runtime and the simulator drive the same protocol at the same
pace. Three profiles are provided:

* `lan()`: tuned to declare a truly dead peer in about one second on a quiet LAN of a
  handful of nodes. Probe every 200 ms with a 100 ms ack deadline (a LAN round trip is
  well under 1 ms, so 100 ms tolerates scheduling hiccups two orders of magnitude longer
  than the network itself). The suspicion timeout is `suspicion_mult * max(1, log10 N) *
  probe_interval`, i.e. 0.5 s for N <= 10, and at most `suspicion_max_mult` times that
  when nobody confirms. Dead in ~1 s = up to ~0.2 s until someone probes the victim, 0.2 s
  of direct + indirect probing, 0.5 s of suspicion, plus gossip.
  The trade-off: a peer that stalls for longer than the probe timeout *and* cannot refute
  within the suspicion timeout (a stop-the-world pause of well over half a second, or a
  saturated link) is declared dead and failed over. Lifeguard's local health multiplier
  keeps an overloaded *prober* from making such accusations; the victim's own stall is
  what the short timeout accepts as a failure. Use `wan()` where that is too eager.
* `wan()`: memberlist's WAN numbers (probe 5 s, timeout 3 s, suspicion mult 6).
* `local()`: memberlist's loopback numbers, for a single machine under test.

Sizing limits bound what a peer holding the cluster key can make us keep (issue 8): at
most `max_new_members` members unknown to us are accepted from one received envelope, the
table holds at most `max_members` records (us and dead or left members included), a
member's metadata is at most `max_meta_bytes`, and at most `max_forwards` indirect probes
run for others at once. memberlist bounds the same things by bytes instead (a push-pull
state of at most 20 MiB, 128 concurrent push-pulls, 512 bytes of metadata) and has no
count limit, so one authenticated frame there can still add every member it names. The
defaults are several times what a 1,000-node mesh needs: a joiner learns up to 999
members from one push-pull, and dead members linger `reap_after` seconds. A full
membership table travels in parts of at most `max_sync_bytes` (estimated) and
`max_new_members` records, each in a frame of its own, so a table of `max_members`
records with the largest metadata (about 2.4 MB) still reaches a peer whole.

Invariants: every interval is positive; `probe_timeout < probe_interval` so the indirect
probe phase has time to run; `nack_fraction` is in (0, 1); `max_new_members <=
max_members`; a part of the table holds the largest record and fits one frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from crdt_types.errors import LocalError
from gossip.codec import MAX_STR_BYTES
from gossip.framing import MAX_FRAME_BYTES

# A member record without its metadata: three strings of at most 4 KiB of UTF-8 each (the
# codec's bound) and a few small fields.
MAX_RECORD_BYTES = 3 * (MAX_STR_BYTES + 5) + 64
# A table part plus its envelope, sealing and length prefix must fit one frame.
MAX_SYNC_BYTES = MAX_FRAME_BYTES - 64 * 1024


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timing and sizing of membership and dissemination; seconds unless named otherwise."""

    name: str = "lan"
    probe_interval: float = 0.2  # one SWIM protocol period
    probe_timeout: float = 0.1  # wait this long for a direct ack before indirect probes
    indirect_checks: int = 3  # k members asked to probe on our behalf
    nack_fraction: float = 0.8  # intermediaries nack after this fraction of probe_timeout
    suspicion_mult: float = 2.5  # min suspicion = mult * max(1, log10 N) * probe_interval
    suspicion_max_mult: float = 3.0  # max suspicion = this * min suspicion
    suspicion_confirmations: int = 2  # Lifeguard K: confirmations that bring it down to min
    awareness_max: int = 8  # Lifeguard local health multiplier saturates here
    gossip_interval: float = 0.2  # one gossip round: push rumours to gossip_nodes peers
    gossip_nodes: int = 3
    gossip_to_dead: float = 2.0  # keep gossiping to recently dead members this long
    retransmit_mult: int = 4  # each rumour is sent retransmit_mult * ceil(log10(N + 1)) times
    max_piggyback: int = 8  # membership rumours piggybacked per envelope
    push_pull_interval: float = 5.0  # full membership exchange with one random member
    reconnect_interval: float = 0.5  # ping one random dead member; push-pull if it answers
    reap_after: float = 60.0  # forget dead and left members after this long
    leave_fanout: int = 6  # members told directly when we leave gracefully
    max_members: int = 4096  # member records kept at most (us, dead and left included)
    max_new_members: int = 2048  # unknown members one received envelope may introduce
    max_meta_bytes: int = 512  # a member's metadata (memberlist's MetaMaxSize)
    max_forwards: int = 256  # indirect probes run for others at once
    max_sync_bytes: int = 512 * 1024  # one part of a full membership table (estimated)

    def __post_init__(self) -> None:
        for field in (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "push_pull_interval",
            "reconnect_interval",
            "reap_after",
            "suspicion_mult",
            "suspicion_max_mult",
        ):
            if not getattr(self, field) > 0:
                raise LocalError(f"GossipConfig.{field} must be positive")
        if self.probe_timeout >= self.probe_interval:
            raise LocalError("GossipConfig.probe_timeout must be below probe_interval")
        if not 0 < self.nack_fraction < 1:
            raise LocalError("GossipConfig.nack_fraction must be in (0, 1)")
        if self.suspicion_max_mult < 1:
            raise LocalError("GossipConfig.suspicion_max_mult must be at least 1")
        for field in (
            "indirect_checks",
            "gossip_nodes",
            "retransmit_mult",
            "max_piggyback",
            "max_members",
            "max_new_members",
            "max_forwards",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalError(f"GossipConfig.{field} must be an int, at least 1")
        if isinstance(self.max_meta_bytes, bool) or not isinstance(self.max_meta_bytes, int):
            raise LocalError("GossipConfig.max_meta_bytes must be an int")
        if self.max_meta_bytes < 0:
            raise LocalError("GossipConfig.max_meta_bytes must not be negative")
        if self.max_new_members > self.max_members:
            raise LocalError("GossipConfig.max_new_members must not exceed max_members")
        value = self.max_sync_bytes
        if isinstance(value, bool) or not isinstance(value, int):
            raise LocalError("GossipConfig.max_sync_bytes must be an int")
        # A part travels in a frame of its own and must hold at least the largest record.
        if not self.max_meta_bytes + MAX_RECORD_BYTES <= value <= MAX_SYNC_BYTES:
            raise LocalError(
                f"GossipConfig.max_sync_bytes must be in max_meta_bytes + {MAX_RECORD_BYTES}"
                f"..{MAX_SYNC_BYTES}"
            )

    def with_(self, **changes: object) -> GossipConfig:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def suspicion_min(self, n: int) -> float:
        """Shortest suspicion timeout in a cluster of `n` members."""
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval

    def suspicion_max(self, n: int) -> float:
        """Suspicion timeout when no other member confirms the suspicion."""
        return self.suspicion_max_mult * self.suspicion_min(n)

    def retransmit_limit(self, n: int) -> int:
        """How many times one membership rumour is piggybacked (memberlist's formula)."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def push_pull_period(self, n: int) -> float:
        """Push-pull interval, stretched logarithmically past 32 members like memberlist."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * math.ceil(math.log2(n) - math.log2(32) + 1)

    def detection_bound(self, n: int) -> float:
        """Upper bound we promise for "killed" to "every live member says dead", in seconds.

        Worst ordinary case: the victim is first probed up to two protocol periods after it
        dies, probing itself takes one period, the suspicion runs its full unconfirmed
        length, and the suspect rumour needs ~log2 N gossip rounds to reach everyone (each
        member then times out on its own clock).
        """
        spread = (math.ceil(math.log2(max(2, n))) + 2) * self.gossip_interval
        return 3 * self.probe_interval + self.suspicion_max(n) + spread


def lan() -> GossipConfig:
    """A quiet LAN: a dead peer is declared in about one second."""
    return GossipConfig()


def wan() -> GossipConfig:
    """Across data centres (memberlist's DefaultWANConfig timings)."""
    return GossipConfig(
        name="wan",
        probe_interval=5.0,
        probe_timeout=3.0,
        suspicion_mult=6.0,
        suspicion_max_mult=6.0,
        suspicion_confirmations=4,
        gossip_interval=0.5,
        gossip_nodes=4,
        gossip_to_dead=60.0,
        push_pull_interval=60.0,
        reconnect_interval=30.0,
        reap_after=24 * 3600.0,
    )


def local() -> GossipConfig:
    """One machine, loopback only (memberlist's DefaultLocalConfig timings)."""
    return GossipConfig(
        name="local",
        probe_interval=1.0,
        probe_timeout=0.2,
        suspicion_mult=3.0,
        suspicion_max_mult=6.0,
        gossip_interval=0.1,
        gossip_to_dead=15.0,
        push_pull_interval=15.0,
        reconnect_interval=5.0,
        reap_after=300.0,
    )


PROFILES = {"lan": lan, "wan": wan, "local": local}


def profile(name: str) -> GossipConfig:
    """Return the named timing profile (`lan`, `wan`, `local`)."""
    try:
        return PROFILES[name]()
    except KeyError:
        raise LocalError(
            f"unknown gossip profile {name!r}; choose from {sorted(PROFILES)}"
        ) from None
