"""Wire contracts shared by the gateway, the bus and every service.

All of them are pydantic v2 models so that anything crossing the bus or HTTP is validated, and
all of them round-trip through JSON: nothing here is ever pickled.
"""

from __future__ import annotations

import itertools
import os
import time
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

CONTROL_PLANE_NAME = "control_plane"
# Client-chosen ids (tasks, sessions, human tasks): safe in paths, logs and keys.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"


def new_id() -> str:
    """A random (version 4) UUID in its usual text form: `str(uuid.uuid4())` in half the time
    (no UUID object; every task and session gets one)."""
    h = os.urandom(16).hex()
    # The version nibble is 4; the variant's two high bits are 10 (RFC 9562): 8, 9, a or b.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}

M = TypeVar("M", bound=BaseModel)


def trusted(cls: type[M], values: dict[str, Any], fields_set: set[str] | None = None) -> M:
    """A `cls` holding `values` as they are: for values this process built itself, every field
    given and of its declared type (say, a list where a list is declared, not a tuple).

    What `model_construct` makes (`fields_set` defaults to every key given), in a fraction of
    its steps and of a validation's: the tool-call path builds a few small models per call, and
    validating values it made itself was the largest part of what they cost. Not for a class
    with private attributes, a validator that changes values, or anything from outside.
    """
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(
        model, "__pydantic_fields_set__", set(values) if fields_set is None else fields_set
    )
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def fresh_stats() -> QueueMessageStats:
    """`QueueMessageStats()`: every time unset (one per message)."""
    return trusted(QueueMessageStats, dict.fromkeys(_STATS_FIELDS), set())


# Message ids only need to be unique: a random per-process prefix and a counter cost a fraction
# of a uuid4 (which reads os.urandom), and a task sends several messages. Ids of tasks, sessions
# and other things clients hold stay uuid4.
_MESSAGE_PREFIX = new_id()[:24]  # the first four groups, dashes included
_message_counter = itertools.count()


def new_message_id() -> str:
    return f"{_MESSAGE_PREFIX}{next(_message_counter):012x}"


class ActionTypes(StrEnum):
    """What a message asks its receiver to do."""

    NEW_TASK = "new_task"
    COMPLETED_TASK = "completed_task"
    NEW_TOOL_CALL = "new_tool_call"
    COMPLETED_TOOL_CALL = "completed_tool_call"
    REQUEST_FOR_HELP = "request_for_help"
    SEND_EVENT = "send_event"
    TASK_STREAM = "task_stream"
    CANCEL_TASK = "cancel_task"


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_FOR_HUMAN = "waiting_for_human"
    WAITING_FOR_INPUT = "waiting_for_input"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)


class QueueMessageStats(BaseModel):
    publish_time: float | None = None
    process_start_time: float | None = None
    process_end_time: float | None = None


_STATS_FIELDS = tuple(QueueMessageStats.model_fields)


# W3C trace context headers (`traceparent`, `tracestate`, `baggage`), bounded: senders are hostile.
TraceHeaders = dict[
    Annotated[str, StringConstraints(max_length=64)],
    Annotated[str, StringConstraints(max_length=8192)],
]


B = TypeVar("B", bound=BaseModel)
_WANTED: Any = object()  # a publisher's mark: it reads the answer from the message


class QueueMessage(BaseModel):
    """An envelope on the bus; `type` names the destination (a service or `control_plane`).

    `trace` carries the OpenTelemetry context of whoever published it (None when tracing is off).
    """

    id_: str = Field(default_factory=new_message_id)
    publisher_id: str = "default"
    type: str = "default"
    action: ActionTypes | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    stats: QueueMessageStats = Field(default_factory=QueueMessageStats)
    trace: TraceHeaders | None = Field(default=None, max_length=8)

    # The model `data` was made from, when the publisher handed one over (`carrying`).
    _body: BaseModel | None = PrivateAttr(default=None)
    # An answer handed back on the message itself (`answer_in_delivery`), or _WANTED.
    _answer: Any = PrivateAttr(default=None)

    @classmethod
    def carrying(
        cls, body: BaseModel, *, answer_in_delivery: bool = False, **fields: Any
    ) -> QueueMessage:
        """A message whose payload is the model `body` itself.

        In one process nobody needs its JSON form: the receiver takes `body` back with
        `body_as` and no dump/validate round trip happens. `data` is made from `body` the
        first time something reads it (a transport that leaves the process, a log line).

        `answer_in_delivery`: the publisher waits for an answer and reads it from this message
        when `publish` returns (`answered`), so a receiver that produces the answer within the
        delivery (an inline consumer of the in-memory bus) may hand it back with
        `answer_here` instead of publishing a reply. Anywhere else (another task, another
        process: private attributes are never serialized) the reply goes over the bus.
        """
        # Built as `model_construct` would (the fields are ours, not input), in fewer steps:
        # this runs for every task, status change and result.
        message = cls.__new__(cls)
        values = {
            "id_": new_message_id(),
            "publisher_id": "default",
            "type": "default",
            "action": None,
            "stats": fresh_stats(),
            "trace": None,
            **fields,
        }
        object.__setattr__(message, "__dict__", values)
        object.__setattr__(message, "__pydantic_fields_set__", {"data", *fields})
        object.__setattr__(message, "__pydantic_extra__", None)
        answer = _WANTED if answer_in_delivery else None
        object.__setattr__(message, "__pydantic_private__", {"_body": body, "_answer": answer})
        return message

    def body_as(self, model: type[B]) -> B:
        """The payload as `model`: the object the publisher handed over, else `data` validated
        (what came from outside the process is checked, as always)."""
        body = self.carried(model)
        return body if body is not None else model.model_validate(self.data)

    def carried(self, model: type[B]) -> B | None:
        """The payload object if the publisher handed over a `model` (so it never left the
        process), else None: a receiver that can do more with an in-process caller asks this."""
        body = self.__pydantic_private__["_body"]  # not `self._body`: that is a slow lookup
        return body if isinstance(body, model) else None

    def wants_answer_here(self) -> bool:
        """True if the publisher reads its answer from this message (see `carrying`); only a
        receiver running within the publisher's `publish` may then use `answer_here`."""
        return self.__pydantic_private__["_answer"] is _WANTED

    def answer_here(self, answer: Any) -> None:
        """Hand `answer` back to the publisher on the message (it asked: `wants_answer_here`).
        It never leaves the process, so it is whatever object the two sides agree on."""
        self.__pydantic_private__["_answer"] = answer

    def answered(self) -> Any:
        """The answer a receiver handed back within the delivery, or None."""
        answer = self.__pydantic_private__["_answer"]
        return None if answer is _WANTED else answer

    def __getattr__(self, name: str) -> Any:
        if name == "data":  # a `carrying` message whose JSON form nobody asked for yet
            body = self.__pydantic_private__["_body"]
            if body is None:
                raise AttributeError(name)
            data = self.__dict__["data"] = body.model_dump(mode="json")
            return data
        return super().__getattr__(name)  # type: ignore[misc]

    # Whatever writes the message (model_dump, model_dump_json, a model or TypeAdapter it is
    # part of, pydantic_core.to_json) goes through this, and pydantic reads `__dict__` itself:
    # without `data` there it would leave the payload out without a word. Out of the process
    # only; in it nothing writes a message.
    @model_serializer(mode="wrap")
    def _with_data(self, write: SerializerFunctionWrapHandler):  # no return type: same schema
        if "data" not in self.__dict__:
            self.data  # noqa: B018 - made now if it is still only a `body`
        return write(self)

    def __repr_args__(self) -> Any:
        self.data  # noqa: B018
        return super().__repr_args__()

    def __iter__(self) -> Any:
        self.data  # noqa: B018
        return super().__iter__()

    # A new `data` is the payload from then on: `body_as` must not answer the old object.
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "data":
            self.__pydantic_private__["_body"] = None
        super().__setattr__(name, value)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__pydantic_private__["_answer"] = None  # the publisher reads the original only
        if update and "data" in update:
            copied.__pydantic_private__["_body"] = None
        return copied


class ChatMessage(BaseModel):
    """A chat turn, kept independent of llama-index so the wire format does not import it."""

    role: str = "user"
    content: str | None = ""
    additional_kwargs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_llama(cls, message: Any) -> ChatMessage:
        role = getattr(message.role, "value", message.role)
        return cls(
            role=str(role),
            content=message.content,
            additional_kwargs=_jsonable_dict(getattr(message, "additional_kwargs", {}) or {}),
        )


def _jsonable_dict(values: dict[str, Any]) -> dict[str, Any]:
    from gateway.jsonable import to_jsonable

    return {str(k): to_jsonable(v) for k, v in values.items()}


class TaskDefinition(BaseModel):
    """A unit of work for a service. `agent_id` names the target service, as in the reference."""

    input: str = ""
    task_id: str = Field(default_factory=new_id)
    session_id: str | None = None
    agent_id: str | None = None


class TaskResult(BaseModel):
    """What a service answers for a task; `status` says how it ended, `error` why it failed.

    `result` (text) and `data` are the reference's fields. `output` is the output as a JSON
    value, which our API shows as the task's `result`; a service that leaves it unset (e.g.
    one written for the reference) is shown by its `result` text.
    """

    task_id: str
    history: list[ChatMessage] = Field(default_factory=list)
    result: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    status: TaskStatus = TaskStatus.COMPLETED
    error: str | None = None


class NewTask(BaseModel):
    task: TaskDefinition
    state: dict[str, Any] = Field(default_factory=dict)


class ServiceDefinition(BaseModel):
    """How a service is discovered: its name and where its routes live."""

    model_config = ConfigDict(extra="ignore")

    service_name: str = Field(min_length=1, max_length=128)
    description: str = "A service."
    prompt: list[Any] = Field(default_factory=list)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    type: str = "remote"
    prefix: str | None = None
    endpoints: list[str] = Field(default_factory=list)
    remote: bool = False


class ToolCallBundle(BaseModel):
    tool_name: str
    tool_args: list[Any] = Field(default_factory=list)
    tool_kwargs: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    id_: str = Field(default_factory=new_id)
    tool_call_bundle: ToolCallBundle
    source_id: str | None = None


class ToolCallResult(BaseModel):
    id_: str
    tool_message: ChatMessage
    result: str
    is_error: bool = False

    @classmethod
    def answering(cls, tool_call: ToolCall, text: str, is_error: bool) -> ToolCallResult:
        """The answer to `tool_call`, with the tool message an LLM's chat history takes."""
        message = ChatMessage(
            role="tool",
            content=text,
            additional_kwargs={
                "name": tool_call.tool_call_bundle.tool_name,
                "tool_call_id": tool_call.id_,
            },
        )
        return cls(id_=tool_call.id_, tool_message=message, result=text, is_error=is_error)


class HumanResponse(BaseModel):
    result: str


class SessionDefinition(BaseModel):
    session_id: str = Field(default_factory=new_id)
    task_ids: list[str] = Field(default_factory=list)
    state: dict[str, Any] = Field(default_factory=dict)


class WorkflowState(BaseModel):
    """A serialized workflow Context plus its HMAC-SHA256 signature (hex)."""

    hash: str | None = None
    state: str | None = None
    run_kwargs: dict[str, Any] = Field(default_factory=dict)
    session_id: str | None = None
    task_id: str | None = None


def _is_none(value: Any) -> bool:
    return value is None


class TaskEvent(BaseModel):
    """One entry of an event stream (status change, workflow event, agent event, result).

    `seq` is its position in its stream (1, 2, ...; the SSE `id:`), set by the gateway when the
    event is published. `gap` marks events the reader asked for that are no longer held;
    `human` entries come from human services on the aggregate stream.
    """

    task_id: str
    kind: Literal["status", "event", "result", "error", "gap", "human"] = "event"
    name: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    status: TaskStatus | None = None
    at: float = Field(default_factory=time.time)
    seq: int | None = None
    # A workflow event as the llama-agents protocol writes it ({value, qualified_name, type,
    # types}); set by the workflow service, left out of the JSON when absent. (`exclude_if`,
    # not a wrap serializer: that ran Python for every event and made each dump 5x slower.)
    envelope: dict[str, Any] | None = Field(default=None, exclude_if=_is_none)
