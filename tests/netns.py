"""The network-namespace test harness, as tests import it (`from tests.netns import HostNetwork`).

The harness itself lives in `mesh.hosts` so that `statemesh chaos` can use it from an
installed distribution (which does not ship `tests`); this module re-exports it and stays
free of pytest so scripts may import it too. Fixtures are in `tests/conftest.py`.
"""

from __future__ import annotations

from mesh.hosts import (
    DEFAULT_PREFIX,
    HOST_INTERFACE,
    NETWORK,
    Host,
    HostNetwork,
    available,
    cleanup_stale,
    list_namespaces,
)

__all__ = [
    "DEFAULT_PREFIX",
    "HOST_INTERFACE",
    "NETWORK",
    "Host",
    "HostNetwork",
    "available",
    "cleanup_stale",
    "list_namespaces",
]
