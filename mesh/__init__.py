"""The statemesh runtime on trio, and the public embedding API.

    from mesh import MeshConfig, open_mesh

    async with open_mesh(MeshConfig(node="a", data_dir="data/a", insecure=True)) as mesh:
        session = await mesh.session("chat-1")
        session.state.append_message("user", "hello")
        await session.commit(replicas=1, timeout=5)

Submodules: `config` (MeshConfig), `runtime` (Mesh, Session, open_mesh, events),
`replica_store` (the durable ReplicaPort), `http` (/status), `ops` (health, metrics,
config and secrets: `mesh.ops`, `ConfigChanged` events), `asyncio_bridge`
(AsyncioMesh for asyncio programs), `storage`, `transport`, `discovery`, `hosts`.
Importing this package imports trio but starts nothing.
"""

from mesh.config import MeshConfig
from mesh.ops import ConfigChanged
from mesh.runtime import (
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    Mesh,
    Session,
    SessionChanged,
    Subscription,
    open_mesh,
)

__all__ = [
    "ConfigChanged",
    "MemberAlive",
    "MemberDead",
    "MemberJoined",
    "MemberLeft",
    "MemberReaped",
    "MemberSuspected",
    "MemberUpdated",
    "Mesh",
    "MeshConfig",
    "Session",
    "SessionChanged",
    "Subscription",
    "open_mesh",
]
