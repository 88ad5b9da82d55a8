"""The live view of a running task: a spinner with the status and elapsed time, and one line
per event above it (tool calls as they start and finish, questions for people, progress).

Rich draws and refreshes it (the elapsed time ticks without our code waking up); the events
come from the client's SSE iterator, which resumes by itself after a dropped connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gateway.client_wire import ResultEvent, TaskEvent

NOISY = frozenset({"AgentInput", "StopEvent", "StartEvent"})


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """An event's own fields (older gateways wrapped free-form ones in `_data`)."""
    inner = data.get("_data")
    return {**inner, **{k: v for k, v in data.items() if k != "_data"}} if inner else data


def _call(name: Any, kwargs: Any) -> str:
    args = ", ".join(f"{k}={_short(v, 30)}" for k, v in (kwargs or {}).items())
    return f"{name}({args})"


def describe(event: TaskEvent) -> str | None:
    """One line of Rich markup for an event, or None for events not worth a line."""
    data = _fields(event.data)
    if event.kind == "status":
        return f"[dim]· {escape(str(event.status))}[/dim]"
    if event.kind == "gap":
        dropped = data.get("dropped", "some")
        return f"[yellow]… {dropped} earlier events are no longer held[/yellow]"
    if event.kind == "error":
        return f"[red]! {escape(_short(data.get('detail') or data))}[/red]"
    if event.kind != "event" or event.name in NOISY:
        return None
    if event.name == "ToolCall":
        return f"[cyan]→ {escape(_call(data.get('tool_name'), data.get('tool_kwargs')))}[/cyan]"
    if event.name == "ToolCallResult":
        colour = "red" if data.get("is_error") else "cyan"
        call = _call(data.get("tool_name"), data.get("tool_kwargs"))
        return f"[{colour}]← {escape(call)} = {escape(_short(data.get('output')))}[/{colour}]"
    if event.name == "AgentStream":
        return None  # tokens: shown in the spinner line, then once whole as AgentOutput
    if event.name == "AgentOutput":
        if data.get("tool_calls") or not data.get("response"):
            return None
        return f"[green]{escape(str(data.get('agent') or 'agent'))}:[/green] " + escape(
            _short(data.get("response"), 200)
        )
    if event.name == "InputRequiredEvent":
        question = next(
            (data[k] for k in ("prefix", "prompt", "question", "message") if data.get(k)), ""
        )
        human_id = data.get("human_task_id")
        hint = f' — answer: agent-gateway human answer {human_id} "…"' if human_id else ""
        return f"[magenta]? {escape(_short(question, 160))}[/magenta][dim]{escape(hint)}[/dim]"
    shown = {k: v for k, v in data.items() if not k.startswith("_")}
    details = " ".join(f"{k}={_short(v, 40)}" for k, v in shown.items())
    return f"• {escape(event.name)} [dim]{escape(details)}[/dim]".rstrip()


class LiveView:
    """A spinner line (status, streamed text, elapsed time) with event lines printed above."""

    def __init__(self, console: Any, task_id: str, service: str) -> None:
        self.console = console
        self.label = f"[bold]{escape(service)}[/bold] [dim]{escape(task_id[:8])}[/dim]"
        self.status = "pending"
        self.streamed = ""
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._row = self._progress.add_task(self._description(), total=None)

    def __enter__(self) -> LiveView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _description(self) -> str:
        tail = f" [dim]{escape(_short(self.streamed[-60:], 60))}[/dim]" if self.streamed else ""
        return f"{self.label} {escape(self.status.replace('_', ' '))}{tail}"

    def show(self, event: TaskEvent) -> None:
        if event.kind == "status" and event.status:
            self.status = str(event.status)
        if event.name == "AgentStream":
            self.streamed += str(_fields(event.data).get("delta") or "")
        elif event.name == "AgentOutput":
            self.streamed = ""
        line = describe(event)
        if line is not None:
            self._progress.console.print(line)
        self._progress.update(self._row, description=self._description())


def follow(view: LiveView, events: Iterable[TaskEvent]) -> dict[str, Any] | None:
    """Show events until the result; the final record, or None if the stream ended without it."""
    for event in events:
        if isinstance(event, ResultEvent):
            return event.record
        view.show(event)
    return None
