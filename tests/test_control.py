"""The contributor's control: schedules and settings (pure), the controller's commands, hooks,
saved settings and transitions, and the worker's task board and the node's state badge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.control import Mode, Schedule, Settings, check_batch_size, check_gpus, effective
from flopnet.node.controller import Controller
from flopnet.node.events import EventBus
from flopnet.node.local import CONTROL_FILE
from flopnet.node.state import node_badge
from flopnet.node.worker.board import TaskBoard, TaskEntry
from flopnet.protocol.errors import ConfigError


def at(hour: int, minute: int = 0) -> time.struct_time:
    return time.struct_time((2026, 12, 1, hour, minute, 0, 1, 335, 0))


def test_schedules_parse_and_apply_over_midnight() -> None:
    night = Schedule.parse("22:00-08:00")
    assert night.text == "22:00-08:00"
    assert night.allows(23 * 60) and night.allows(7 * 60 + 59) and not night.allows(8 * 60)
    assert not night.allows(12 * 60)
    assert night.next_change(21 * 60 + 30) == 30
    two = Schedule.parse("09:00-12:00, 13:00-24:00")
    assert two.allows(13 * 60) and not two.allows(12 * 60 + 30) and two.allows(23 * 60 + 59)
    assert Schedule.parse("00:00-24:00").next_change(0) == 24 * 60
    for text in ("00:00-24:00", "12:00-24:00", "22:00-00:00"):
        assert Schedule.parse(Schedule.parse(text).text) == Schedule.parse(text)
    for bad in (
        "",
        "22-08",
        "25:00-08:00",
        "10:00-10:00",
        "10:61-11:00",
        ",".join(["1:00-2:00"] * 9),
    ):
        with pytest.raises(ConfigError):
            Schedule.parse(bad)


def test_effective_state_says_why() -> None:
    night = Settings(schedule=Schedule.parse("22:00-08:00"))
    day = effective(night, 12 * 60)
    assert (day.state, day.reason, day.may_claim) == ("paused", "schedule", False)
    assert day.badge == "paused (schedule)" and "resumes at 22:00" in day.why
    assert effective(night, 23 * 60).may_claim
    manual = effective(Settings(mode=Mode.PAUSED, schedule=night.schedule), 23 * 60)
    assert manual.badge == "paused (manual)" and not manual.may_claim
    finishing = effective(Settings(mode=Mode.FINISHING), 0)
    assert finishing.state == "finishing" and not finishing.may_claim


def test_settings_round_trip_and_a_damaged_file_keeps_defaults() -> None:
    s = Settings(Mode.PAUSED, Schedule.parse("22:00-08:00"), 4, (0, 2))
    assert Settings.from_json(s.to_json(), Settings()) == s
    damaged = {"mode": "sleeping", "schedule": "noon", "batch_size": 10**9, "gpus": ["x"]}
    assert Settings.from_json(damaged, Settings(batch_size=2)) == Settings(batch_size=2)
    assert check_batch_size(3, 8) == 3
    for bad in (0, 9, True, "2", 2.0):
        with pytest.raises(ConfigError):
            check_batch_size(bad, 8)
    assert check_gpus([2, 0], 4) == (0, 2)
    for gpus, available in (([0, 0], 4), ([4], 4), ([0], 0), ([], 4), ([-1], None), ("0", 4)):
        with pytest.raises(ConfigError):
            check_gpus(gpus, available)


def test_command_line_flags_win_over_saved_settings_only_when_given(tmp_path: Path) -> None:
    net = NetworkParams(network_id="c")
    saved = Settings(Mode.PAUSED, Schedule.parse("22:00-08:00"), 4, (1,))
    plain = NodeConfig(roles=("worker",), data_dir=tmp_path, network=net, batch_size=1)
    assert plain.control_settings(saved) == saved
    assert plain.control_settings(None) == Settings(batch_size=1)
    flagged = NodeConfig(
        roles=("worker",),
        data_dir=tmp_path,
        network=net,
        batch_size=2,
        gpus=(0,),
        control_flags=frozenset({"batch_size", "gpus"}),
    )
    assert flagged.control_settings(saved) == Settings(Mode.PAUSED, saved.schedule, 2, (0,))
    with pytest.raises(ConfigError):
        NodeConfig(roles=("worker",), data_dir=tmp_path, network=net, pause_schedule="soon")


def test_controller_commands_hooks_events_and_saved_file(tmp_path: Path) -> None:
    clock = [at(12)]

    async def main() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        control = Controller(tmp_path, Settings(), bus, clock=lambda: clock[0], gpu_count=lambda: 2)
        stopped: list[str] = []
        devices: list[tuple[int, ...] | None] = []
        control.stop_hooks.append(stopped.append)
        control.device_hooks.append(devices.append)
        control.pause_now()
        assert stopped == ["paused"] and not control.may_claim()
        control.resume()
        control.finish_then_pause()
        assert control.effective().state == "finishing"
        control.finished()
        assert control.effective().badge == "paused (manual)"
        control.resume()
        with pytest.raises(ConfigError, match="no GPU 2"):
            control.set_gpus([2])
        control.set_gpus([1])
        assert devices == [(1,)]
        control.set_batch_size(3)
        control.set_schedule("22:00-08:00")
        assert control.effective().badge == "paused (schedule)"
        with control.hold("restarting the model process"):
            clock[0] = at(23)
            assert control.effective().state == "holding"
        assert control.may_claim()
        saved = json.loads((tmp_path / CONTROL_FILE).read_text())
        assert saved == {"mode": "running", "schedule": "22:00-08:00", "batch_size": 3, "gpus": [1]}
        assert oct((tmp_path / CONTROL_FILE).stat().st_mode & 0o777) == "0o600"
        assert Controller.saved(tmp_path) == control.settings
        events, lagged = sub.take()
        kinds = {e.kind for e in events}
        assert kinds == {"control"} and not lagged and len(events) >= 10
        # The ticker notices a schedule transition without any command.
        clock[0] = at(12)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.run)
            with trio.fail_after(5):
                await control.changed().wait()
            nursery.cancel_scope.cancel()
        assert bus.recent()[-1].data["effective"]["reason"] == "schedule"

    trio.run(main)


def test_the_task_board_keeps_stages_and_hands_changes_on() -> None:
    seen: list[str] = []
    board = TaskBoard(lambda e: seen.append(e.stage), keep_finished=2)
    for i in range(4):
        board.claimed(TaskEntry(f"{i:032x}", f"t{i}", "math", 0, "pub", "val", float(i), 99.0))
    board.move(f"{0:032x}", "generating", 5.0)
    assert [e.lease_id for e in board.releasable()][-1] == f"{0:032x}"
    board.generated(
        f"{0:032x}",
        9.0,
        output="x",
        tokens=3,
        proofs=1,
        finish_reason="eos",
        decode_s=2.0,
        proof_s=1.0,
    )
    entry = board.get(f"{0:032x}")
    assert entry is not None and entry.stage == "submitting"
    assert [s for s, _ in entry.history] == ["claimed", "generating", "proving", "submitting"]
    assert ("proving", 8.0) in entry.history
    for i in range(4):
        board.move(f"{i:032x}", "released" if i % 2 else "verdict", 10.0 + i, accepted=True)
    assert len(board.entries()) == 2  # finished ones beyond keep_finished are dropped
    assert board.by_stage()["verdict"] + board.by_stage()["released"] == 2
    assert seen.count("claimed") == 4 and "proving" not in seen
    with pytest.raises(ValueError):
        board.move(f"{3:032x}", "dancing", 11.0)


def test_the_badge_puts_connectivity_first_and_says_why() -> None:
    base = {"roles": ["worker"], "peers": [], "uptime_s": 60, "bootstrap_peers": 1}
    assert node_badge(base).text == "offline: no bootstrap peer reachable"
    assert node_badge({**base, "uptime_s": 1}).text == "connecting"
    online = {**base, "peers": ["p"], "worker": {"phase": "idle", "known_tasks": 0}}
    assert node_badge(online).text == "waiting for tasks"
    paused = {
        **online,
        "control": {"effective": {"state": "paused", "badge": "paused (schedule)", "why": "w"}},
    }
    assert node_badge(paused).text == "paused (schedule)" and node_badge(paused).why == "w"
    working = {**online, "worker": {"phase": "generating", "in_flight": 2, "known_tasks": 3}}
    assert node_badge(working).text == "working"
    done = {
        "roles": ["publisher", "validator"],
        "peers": ["p"],
        "uptime_s": 9,
        "publisher": {"all_done": True, "tasks": 4},
        "validator": {"queued": 0},
    }
    assert node_badge(done).text == "all validated"
