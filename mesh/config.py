"""`MeshConfig`: everything one mesh node needs to start, checked before anything starts.

A `MeshConfig` is a frozen value built by the embedding program or by `statemesh peer`
from its flags. `__post_init__` checks every field and raises `LocalError` with a message
naming the field, so a bad configuration fails before a socket is bound or a file opened.

Invariants:

* Security by default: a node either has a key (a `Keyring`, a key file path, or 32 raw
  key bytes) or says `insecure=True` explicitly; neither, or both, is an error.
* mDNS never defaults to every interface here (library code): `interfaces` lists the IPv4
  addresses to announce and browse on, and an empty list means no mDNS. `statemesh peer`
  is what turns "no --interface" into "all interfaces" for a user's machine.
* `listen` is a numeric "host:port"; a wildcard host needs an explicit `advertise`
  address, because peers must be told an address they can reach.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crdt_types.errors import LocalError
from gossip.config import PROFILES, GossipConfig
from gossip.config import profile as gossip_profile
from gossip.keyring import Keyring, load_key_file
from gossip.quorum import POLICIES
from gossip.replication import ReplicationConfig
from mesh.transport import TransportConfig, parse_address

__all__ = ["UNREADABLE_POLICIES", "MeshConfig"]

# What the runtime does when SQLite cannot read the database file at all.
UNREADABLE_POLICIES = ("refill", "stop")

_MAX_NAME_BYTES = 200  # node ids and cluster names travel in mDNS TXT records


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise LocalError(f"{what} must be a non-empty string, got {value!r}")
    if len(value.encode()) > _MAX_NAME_BYTES or not value.isprintable() or value != value.strip():
        raise LocalError(f"{what} {value!r} must be printable, unpadded, at most 200 bytes")
    return value


def _check_numeric_address(what: str, address: object, *, port_zero: bool) -> str:
    host, port = parse_address(address)  # type: ignore[arg-type]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"{what} {address!r}: host must be a numeric IP address") from None
    if port == 0 and not port_zero:
        raise LocalError(f"{what} {address!r}: port 0 is not an address peers can reach")
    return address  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Configuration of one mesh node (see the module docstring for the rules)."""

    node: str
    data_dir: str | os.PathLike[str]
    listen: str = "127.0.0.1:0"
    seeds: Sequence[str] = ()
    interfaces: Sequence[str] = ()
    cluster: str = "statemesh"
    key: Keyring | str | os.PathLike[str] | bytes | None = None
    insecure: bool = False
    profile: str = "lan"
    advertise: str | None = None  # the "host:port" peers should use; default: the bound one
    http: str | None = None  # serve /status on this "host:port"
    mdns: bool = True  # announce and browse on `interfaces` (when there are any)
    seed: int | None = None  # seeds the protocol's random choices (tests replay with it)
    gossip: GossipConfig | None = None  # overrides `profile`
    replication: ReplicationConfig | None = None
    transport: TransportConfig | None = None
    leave_timeout: float = 2.0  # how long a graceful leave may spend telling peers
    commit_timeout: float = 10.0  # default timeout of commit(replicas=...)
    split_brain: str = "majority"  # or "availability" (see gossip.quorum)
    ready_lag: float = 2.0  # /readyz: seconds behind peers that still count as ready
    # An unreadable database file: "refill" moves it aside and starts empty, "stop" exits.
    on_unreadable_store: str = "refill"
    _keyring: Keyring | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("node", self.node)
        _check_name("cluster", self.cluster)
        if not isinstance(self.data_dir, str | os.PathLike) or not str(self.data_dir):
            raise LocalError(f"data_dir must be a path, got {self.data_dir!r}")
        _check_numeric_address("listen", self.listen, port_zero=True)
        host, _ = parse_address(self.listen)
        if ipaddress.ip_address(host).is_unspecified and self.advertise is None:
            raise LocalError(
                f"listen {self.listen!r} is a wildcard: give advertise='host:port' to tell peers"
            )
        if self.advertise is not None:
            _check_numeric_address("advertise", self.advertise, port_zero=True)
        if isinstance(self.seeds, str) or not isinstance(self.seeds, Sequence):
            raise LocalError(f"seeds must be a list of 'host:port', got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        for seed in self.seeds:
            _check_numeric_address("seed", seed, port_zero=False)
        if isinstance(self.interfaces, str) or not isinstance(self.interfaces, Sequence):
            raise LocalError(
                f"interfaces must be a list of IPv4 addresses, got {self.interfaces!r}"
            )
        object.__setattr__(self, "interfaces", tuple(self.interfaces))
        for ip in self.interfaces:
            try:
                ipaddress.IPv4Address(ip)
            except (ipaddress.AddressValueError, ValueError):
                raise LocalError(f"interface {ip!r} is not an IPv4 address") from None
        if self.http is not None:
            _check_numeric_address("http", self.http, port_zero=True)
        if self.profile not in PROFILES:
            raise LocalError(f"profile must be one of {sorted(PROFILES)}, got {self.profile!r}")
        if self.gossip is not None and not isinstance(self.gossip, GossipConfig):
            raise LocalError("gossip must be a GossipConfig")
        if self.replication is not None and not isinstance(self.replication, ReplicationConfig):
            raise LocalError("replication must be a ReplicationConfig")
        if self.transport is not None and not isinstance(self.transport, TransportConfig):
            raise LocalError("transport must be a TransportConfig")
        for name in ("leave_timeout", "commit_timeout", "ready_lag"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LocalError(f"{name} must be a number of seconds, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise LocalError(f"{name} must be positive and finite, got {value!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise LocalError(f"seed must be an int, got {self.seed!r}")
        if self.split_brain not in POLICIES:
            raise LocalError(
                f"split_brain must be 'majority' or 'availability', got {self.split_brain!r}"
            )
        if self.on_unreadable_store not in UNREADABLE_POLICIES:
            raise LocalError(
                f"on_unreadable_store must be 'refill' or 'stop', got {self.on_unreadable_store!r}"
            )
        if not isinstance(self.insecure, bool) or not isinstance(self.mdns, bool):
            raise LocalError("insecure and mdns must be bools")
        object.__setattr__(self, "_keyring", self._resolve_key())

    def _resolve_key(self) -> Keyring | None:
        if self.insecure:
            if self.key is not None:
                raise LocalError("give a key or insecure=True, not both")
            return None
        key = self.key
        if key is None:
            raise LocalError(
                "no cluster key: pass key= (a Keyring, key file or 32 bytes), or insecure=True"
            )
        if isinstance(key, Keyring):
            if key.primary_id is None:
                raise LocalError("the keyring holds no key")
            return key
        if isinstance(key, bytes):
            return Keyring([key])
        if isinstance(key, str | os.PathLike):
            return Keyring([load_key_file(Path(key))])
        raise LocalError(
            f"key must be a Keyring, a key file path or bytes, not {type(key).__name__}"
        )

    @property
    def keyring(self) -> Keyring | None:
        """The resolved keyring (None when insecure)."""
        return self._keyring

    def gossip_config(self) -> GossipConfig:
        """The timing profile in force (`gossip` if given, else the named `profile`)."""
        return self.gossip if self.gossip is not None else gossip_profile(self.profile)
