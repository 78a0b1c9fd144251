"""Shared fixtures. Keep this small; put helpers in the test modules that use them.

Namespace hosts: `host_network` gives three hosts on a private bridge, `host_network_factory`
builds any number; both skip (with the reason) where namespaces cannot be made (not root,
no `ip` or `nft`), and remove every namespace and process afterwards, also on failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.netns import HostNetwork, available, cleanup_stale


def _require_netns() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def _netns_session() -> None:
    """Skip without namespace support; sweep leftovers of crashed earlier runs once."""
    _require_netns()
    cleanup_stale()


@pytest.fixture
def host_network_factory(_netns_session: None) -> Iterator[Callable[..., HostNetwork]]:
    """Build `HostNetwork(n)`s on demand; all are closed when the test ends."""
    made: list[HostNetwork] = []

    def make(n: int = 3) -> HostNetwork:
        net = HostNetwork(n)
        made.append(net)
        return net

    yield make
    for net in made:
        net.close()


@pytest.fixture
def host_network(host_network_factory: Callable[..., HostNetwork]) -> HostNetwork:
    """Three namespace hosts on a private bridge."""
    return host_network_factory(3)
