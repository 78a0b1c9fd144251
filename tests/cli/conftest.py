"""Fixtures shared by the operations CLI tests (`config`, `secret`, `status`).

`pair` is module-scoped: each test module gets its own two peers (starting them costs
seconds), in a directory named after the module, stopped by pid when the module ends.
"""

from __future__ import annotations

import pytest

from tests.cli.ops_peers import start_pair


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory):
    """(root, key file, peer a, peer b): two keyed peers on loopback, joined and ready."""
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    key, a, b = start_pair(root)
    yield root, key, a, b
    a.stop(), b.stop()
