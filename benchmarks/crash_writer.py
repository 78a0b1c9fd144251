"""The writer process that `statemesh bench crash` (and the store's crash tests) kill.

It opens the store in DATA_DIR, rebuilds the documents already there (each with a fresh
client id, as a restarted node would), prints `ready`, and then writes until it is killed
or `--max-seconds` pass. Several trio writer tasks set `memory[<tag>.w<n>] = i` (i counting
up) in randomly chosen session documents through one `AsyncStore`, wait for durability
every few writes, and only then print one line per write:

    ack <doc_id> <key> <value> <seq>

A line on stdout is therefore a promise that the write is on disk; the parent checks every
promise after the SIGKILL. A checkpoint task compacts a random document every
`--checkpoint-every` seconds so kills also land in the middle of checkpoints. Seeded.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import pycrdt
import trio

from mesh.storage import AsyncStore


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the writer's command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crash_writer")
    parser.add_argument("data_dir")
    parser.add_argument("--tag", required=True, help="prefix of the keys this run writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--checkpoint-every", type=float, default=0.05)
    parser.add_argument("--max-writes", type=int, default=1_000_000)
    return parser.parse_args(argv)


async def write(args: argparse.Namespace) -> None:
    """Write until killed, the time limit or the write limit; print each durable ack."""
    rng = random.Random(args.seed)
    doc_ids = [f"session/crash-{d}" for d in range(args.docs)]
    async with AsyncStore.open(args.data_dir) as store:
        loaded = await store.load_all()
        docs: dict[str, tuple[pycrdt.Doc, pycrdt.Map, list[bytes]]] = {}
        for doc_id in doc_ids:
            doc = loaded.get(doc_id) or await store.new_doc(doc_id)
            box: list[bytes] = []
            doc.observe(lambda event, box=box: box.append(event.update))
            docs[doc_id] = (doc, doc.get("memory", type=pycrdt.Map), box)
        _out(b"ready\n")
        budget = [args.max_writes]

        async def writer(w: int) -> None:
            key = f"{args.tag}.w{w}"
            value = 0
            while budget[0] > 0:
                window = []
                for _ in range(rng.randint(1, 4)):
                    budget[0] -= 1
                    value += 1
                    doc_id = rng.choice(doc_ids)
                    doc, memory, box = docs[doc_id]
                    with doc.transaction():
                        memory[key] = value
                    window.append((doc_id, value, store.submit(doc_id, box.pop())))
                lines = []
                for doc_id, v, pending in window:
                    seq = await pending.wait()
                    lines.append(f"ack {doc_id} {key} {v} {seq}\n")
                _out("".join(lines).encode())

        async def checkpointer() -> None:
            while True:
                await trio.sleep(args.checkpoint_every * rng.uniform(0.5, 1.5))
                await store.checkpoint(rng.choice(doc_ids))

        with trio.move_on_after(args.max_seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(checkpointer)
                async with trio.open_nursery() as writers:
                    for w in range(args.writers):
                        writers.start_soon(writer, w)
                nursery.cancel_scope.cancel()


def _out(data: bytes) -> None:
    # Unbuffered: what the parent reads is exactly what was acknowledged, no more.
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the writer process."""
    trio.run(write, parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
