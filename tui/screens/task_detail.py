"""A task's detail: its stages, the proof and verdict values beside their thresholds, what
the verdict means, the prompt and the output. It reads the lease again when its stage moves."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from flopnet.tui.data import NodeData
from flopnet.tui.format import ago, number
from flopnet.tui.widgets import NodeScreen


def measures_text(measures: list[dict[str, Any]]) -> Text:
    """Each measured value beside its threshold, failing ones in red (pure)."""
    out = Text()
    if not measures:
        out.append("no proof values yet (the verdict brings them)", "dim")
        return out
    for m in measures:
        mark, style = ("✔", "green") if m["passed"] else ("✘", "bold red")
        out.append(f"{mark} ", style)
        out.append(f"{m['check']}: {m['name']} ")
        out.append(number(m["value"]), style)
        out.append(f" (limit {number(m['limit'])})\n")
    return out


def detail_text(task: dict[str, Any], now: float) -> Text:
    """Everything known of one lease (pure)."""
    out = Text()
    out.append(f"{task['task_id']}#{task['sample_index']}", "bold")
    out.append(f"  {task['stage']}  lease {task['lease_id'][:12]}\n")
    history = "  →  ".join(f"{h['stage']} {ago(h['at'], now)}" for h in task.get("history") or [])
    out.append(f"stages: {history}\n", "dim")
    out.append(
        f"tokens {task.get('tokens', 0)}  proofs {task.get('proofs', 0)}  decode "
        f"{task.get('decode_s', 0)}s  proofs {task.get('proof_s', 0)}s  finish "
        f"{task.get('finish_reason') or '-'}\n"
    )
    explanation = task.get("explanation")
    if explanation:
        style = "bold green" if task.get("accepted") else "bold red"
        out.append(f"\n{explanation['headline']}\n", style)
        if not task.get("accepted"):
            out.append(f"What to do: {explanation['advice']}\n")
    out.append("\nProof and verdict values\n", "bold underline")
    out.append_text(measures_text(task.get("measures") or []))
    if task.get("reasons"):
        out.append("\nReasons\n", "bold underline")
        for reason in task["reasons"]:
            out.append(f"• {reason}\n")
    out.append("\nPrompt\n", "bold underline")
    out.append(str(task.get("prompt", ""))[-2000:] + "\n")
    out.append("\nOutput\n", "bold underline")
    output = task.get("output") or ""
    out.append(output if output else "(not generated yet)", "" if output else "dim")
    if task.get("stage") == "generating" and output:
        out.append(f" ▍ ({task.get('tokens', 0)} tokens so far)", "dim")
    return out


class TaskDetailScreen(NodeScreen):
    """One lease in full; it follows the lease's events while it is open."""

    CSS_PATH = "task_detail.tcss"
    NEEDS = ("status", "tasks")  # a row's stage or token count moving: read the lease again
    BINDINGS: ClassVar = [Binding("escape", "close", "Back")]

    def __init__(self, lease_id: str) -> None:
        super().__init__()
        self.lease_id = lease_id
        self.task_doc: dict[str, Any] | None = None

    def body(self) -> ComposeResult:
        with VerticalScroll(id="task-detail-scroll"):
            yield Static("reading the task…", id="task-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self.run_worker(self.reload(), exclusive=True, group="detail")

    async def reload(self) -> None:
        client = self.flop_app.client
        if client is not None:
            self.task_doc = await client.get(f"/tasks/{self.lease_id}")
        self.redraw()

    def show(self, data: NodeData) -> None:
        task = self.task_doc or _seeded(data, self.lease_id)
        found = self.query("#task-detail")
        if not found:
            return  # its body is not mounted yet: the reload after mount draws it
        widget = found.first(Static)
        scroll = self.query_one("#task-detail-scroll", VerticalScroll)
        following = scroll.scroll_y >= scroll.max_scroll_y - 1  # at the end: stay there
        if task is None:
            widget.update(Text("no such task on this node (it may have been dropped)", "dim"))
        else:
            widget.update(detail_text(task, self.now()))
            if following and task.get("stage") == "generating":
                self.call_after_refresh(scroll.scroll_end, animate=False)
        for row in (data.doc("tasks") or {}).get("tasks") or []:
            if (
                row.get("lease_id") == self.lease_id
                and self.task_doc is not None
                # a new stage, or the output grew while it is generated (it streams)
                and (
                    row.get("stage") != self.task_doc.get("stage")
                    or row.get("tokens") != self.task_doc.get("tokens")
                )
            ):
                self.run_worker(self.reload(), exclusive=True, group="detail")

    def action_close(self) -> None:
        self.dismiss()


def _seeded(data: NodeData, lease_id: str) -> dict[str, Any] | None:
    details = data.doc("task_details") or {}
    found = details.get(lease_id)
    return found if isinstance(found, dict) else None
