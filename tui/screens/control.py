"""The Control dialog: active hours (a pause schedule such as 22:00-08:00), batch size, and
which GPUs the model uses (the model process restarts on them). Each field is sent as its own
command; the node checks it and says why when it refuses."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


def parse_gpus(text: str) -> list[int] | None:
    """``"0,1"`` -> [0, 1]; empty or ``all`` -> None (every GPU); ValueError otherwise."""
    text = text.strip()
    if not text or text.lower() == "all":
        return None
    return [int(part) for part in text.split(",") if part.strip()]


class ControlScreen(ModalScreen[None]):
    """Change the node's schedule, batch size and GPUs."""

    CSS_PATH = "control.tcss"
    BINDINGS: ClassVar = [Binding("escape", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        from flopnet.tui.app import FlopnetApp

        app = self.app
        assert isinstance(app, FlopnetApp)
        settings = ((app.current.status.get("control") or {}).get("settings")) or {}
        gpus = settings.get("gpus")
        with Grid(id="control-grid"):
            yield Label("Work only in (local time)")
            yield Input(settings.get("schedule") or "", placeholder="22:00-08:00", id="schedule")
            yield Label("Batch size")
            yield Input(str(settings.get("batch_size", 1)), type="integer", id="batch")
            yield Label("GPUs (0,1 or all)")
            yield Input(",".join(map(str, gpus)) if gpus else "all", id="gpus")
        yield Static(id="control-message")
        with Horizontal(id="control-buttons"):
            yield Button("Apply", variant="primary", id="apply")
            yield Button("Close", id="close")

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.dismiss()
            return
        await self.apply()

    async def apply(self) -> None:
        """Send each changed setting; stay open on a refusal, saying why."""
        from flopnet.tui.app import FlopnetApp

        app = self.app
        assert isinstance(app, FlopnetApp)
        settings = ((app.current.status.get("control") or {}).get("settings")) or {}
        message = self.query_one("#control-message", Static)
        schedule = self.query_one("#schedule", Input).value.strip() or None
        commands: list[tuple[str, dict[str, Any], str]] = []
        if schedule != settings.get("schedule"):
            commands.append(("/control/schedule", {"schedule": schedule}, "schedule set"))
        batch_text = self.query_one("#batch", Input).value.strip()
        if batch_text and batch_text != str(settings.get("batch_size")):
            try:
                commands.append(
                    ("/control/batch-size", {"batch_size": int(batch_text)}, "batch size set")
                )
            except ValueError:
                message.update("batch size: a whole number")
                return
        try:
            gpus = parse_gpus(self.query_one("#gpus", Input).value)
        except ValueError:
            message.update("GPUs: numbers separated by commas, or all")
            return
        if gpus != settings.get("gpus"):
            commands.append(("/control/gpus", {"gpus": gpus}, "GPUs set; the model restarts"))
        for path, body, done in commands:
            if not await app.command("PUT", path, body, done):
                message.update(f"refused: {path} (see the notification)")
                return
        self.dismiss()
