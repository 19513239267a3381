"""Best-effort gossip made reliable: a worker that missed announcements fetches them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.model.tokenizer import ByteTokenizer
from flopnet.node.publisher.publisher import Publisher
from flopnet.node.tasks import builtin_tasks
from flopnet.node.worker.worker import Worker
from flopnet.protocol.catalog import ANNOUNCEMENTS, tasks_topic
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity

PUBLISHER = Identity(b"\x31" * 32)
WORKER = Identity(b"\x32" * 32)
NET = NetworkParams(
    network_id="resync",
    publishers=(PUBLISHER.public_key.hex(),),
    validators=(PUBLISHER.public_key.hex(),),
)
TASKS = builtin_tasks(40)


async def wait_for(predicate: object, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.05)


@pytest.mark.timeout(120)
def test_late_joiner_and_gap_are_resynced(tmp_path: Path) -> None:
    async def main() -> None:
        pub_host = P2PHost(PUBLISHER, network_id=NET.network_id)
        work_host = P2PHost(WORKER, network_id=NET.network_id)
        config = NodeConfig(roles=("publisher",), data_dir=tmp_path, network=NET)
        publisher = Publisher(config, PUBLISHER, pub_host, ByteTokenizer(), TASKS)
        pub_host.serve(ANNOUNCEMENTS, publisher.handle_range)
        worker_config = NodeConfig(roles=("worker",), data_dir=tmp_path, network=NET)
        worker = Worker(worker_config, WORKER, work_host, None)  # type: ignore[arg-type]

        async with pub_host.running() as pub, work_host.running() as work:
            # 30 announcements the worker never hears (gossip's message cache could still
            # replay announcements published just before it joined, so these skip gossip).
            for task in TASKS[:30]:
                publisher.log.append(publisher.log.next_seq(), await _sealed_only(publisher, task))
            await work.connect(pub.addrs()[0])
            await work.subscribe(tasks_topic(NET.network_id), worker.on_announcement)
            await pub.subscribe(tasks_topic(NET.network_id), _ignore)
            await wait_for(lambda: work.topic_peers(tasks_topic(NET.network_id)) > 0)
            await trio.sleep(1.5)  # let the gossip mesh form

            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker._resync_loop)
                # Gossip delivers seq 31..: the gap 1..30 triggers a resync.
                for task in TASKS[30:35]:
                    await publisher.announce(task)
                await wait_for(lambda: len(worker._offers) == 35)
                assert worker.stats.resyncs >= 1

                # Five more that the worker never hears; a heartbeat head reveals them.
                for task in TASKS[35:]:
                    publisher.log.append(
                        publisher.log.next_seq(), await _sealed_only(publisher, task)
                    )
                worker.on_publisher_head(pub.peer_id, publisher.log.head)
                await wait_for(lambda: len(worker._offers) == 40)
                tracker = worker._trackers[pub.peer_id]
                assert tracker.contiguous == 40 and tracker.missing_from() is None
                nursery.cancel_scope.cancel()

    trio.run(main)


async def _ignore(sender: str, data: bytes) -> None:
    return None


async def _sealed_only(publisher: Publisher, task: object) -> bytes:
    """A sealed announcement that is logged but never gossiped (a lost message)."""
    from flopnet.protocol.envelope import seal
    from flopnet.protocol.messages import TaskAnnouncement

    message = TaskAnnouncement(
        version=1,
        seq=publisher.log.next_seq(),
        task_id=task.task_id,  # type: ignore[attr-defined]
        task_type="math",
        samples=1,
        max_new_tokens=48,
        announced_at=1.0,
    )
    return seal(message, PUBLISHER, NET.network_id)
