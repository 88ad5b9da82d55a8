"""The demo agent: a FunctionAgent driven by a scripted, offline function-calling "LLM".

The script reads the last user message, finds an arithmetic expression in it ("What is
(3+4)*5?"), and answers it only by calling tools: each binary operation becomes a tool call
(`add`, `subtract`, `multiply`, `divide`), independent ones in parallel, later ones using the tool
results. `ans` in a question means the previous answer of the conversation, so the demo shows
whether chat memory survives between tasks. No keys, no network, same answer every time.

To use a real model instead, return a FunctionAgent with e.g. `OpenAI(model="gpt-4o-mini")` from
`build_agent`; the gateway does not change (see the README).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM

OPERATIONS = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide"}
ANSWER = re.compile(r"The answer is (-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)\.")
EXPRESSION = re.compile(r"(?:\d+(?:\.\d+)?|\bans\b|[-+*/()\s])+")
HELP = "I answer arithmetic questions such as 'What is (3+4)*5?'; 'ans' is the previous answer."


class ScriptError(ValueError):
    """The question is not something the script can answer."""


@dataclass
class Operation:
    """One tool call of the plan; operands are numbers or indexes of earlier operations."""

    tool: str
    left: float | int | str
    right: float | int | str


def plan(expression: str, previous: float | int | None) -> tuple[list[Operation], Any]:
    """The tool calls that compute `expression`, in dependency order, and the final operand."""
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        raise ScriptError(f"I cannot read {expression.strip()!r} as arithmetic.") from None
    operations: list[Operation] = []

    def visit(node: ast.AST) -> float | int | str:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id == "ans":
            if previous is None:
                raise ScriptError("There is no previous answer in this conversation yet.")
            return previous
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = visit(node.operand)
            if isinstance(value, str):  # -(a+b) = 0 - (a+b)
                operations.append(Operation("subtract", 0, value))
                return f"#{len(operations) - 1}"
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATIONS:
            left, right = visit(node.left), visit(node.right)
            operations.append(Operation(OPERATIONS[type(node.op)], left, right))
            return f"#{len(operations) - 1}"
        raise ScriptError(f"I only know + - * / and numbers, not {ast.unparse(node)!r}.")

    return operations, visit(tree)


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _previous_answer(history: Sequence[ChatMessage]) -> int | float | None:
    for message in reversed(history):
        if message.role == MessageRole.ASSISTANT and message.content:
            match = ANSWER.search(message.content)
            if match:
                return _number(match.group(1))
    return None


def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """The scripted LLM: the next assistant message given the conversation so far."""
    users = [i for i, m in enumerate(messages) if m.role == MessageRole.USER]
    if not users:
        return ChatMessage(role="assistant", content=HELP)
    last = users[-1]
    question = messages[last].content or ""
    found = [m.strip() for m in EXPRESSION.findall(question) if re.search(r"\d|ans", m)]
    if not found:
        return ChatMessage(role="assistant", content=HELP)
    try:
        operations, final = plan(max(found, key=len), _previous_answer(messages[:last]))
    except ScriptError as exc:
        return ChatMessage(role="assistant", content=str(exc))
    turn = len(users)
    results: dict[str, str] = {}
    for message in messages[last + 1 :]:
        if message.role == MessageRole.TOOL:
            results[str(message.additional_kwargs.get("tool_call_id"))] = message.content or ""

    def call_id(index: int) -> str:
        return f"call_{turn}_{index}"

    values: dict[str, int | float] = {}
    for index in range(len(operations)):
        text = results.get(call_id(index))
        if text is None:
            continue
        try:
            values[f"#{index}"] = _number(text)
        except ValueError:
            return ChatMessage(role="assistant", content=f"I could not compute that: {text}")

    def resolve(operand: Any) -> Any:
        return values.get(operand) if isinstance(operand, str) else operand

    if all(f"#{i}" in values for i in range(len(operations))):
        answer = resolve(final)
        return ChatMessage(role="assistant", content=f"The answer is {answer}.")
    available = {tool.metadata.name for tool in kwargs.get("tools") or []}
    calls = []
    for index, op in enumerate(operations):
        left, right = resolve(op.left), resolve(op.right)
        if call_id(index) in results or left is None or right is None:
            continue
        if op.tool not in available:
            return ChatMessage(role="assistant", content=f"I have no {op.tool!r} tool to use.")
        calls.append(
            ToolCallBlock(
                tool_call_id=call_id(index), tool_name=op.tool, tool_kwargs={"a": left, "b": right}
            )
        )
    return ChatMessage(role="assistant", blocks=calls)


def scripted_llm() -> MockFunctionCallingLLM:
    return MockFunctionCallingLLM(response_generator=respond)


def build_agent() -> FunctionAgent:
    """The demo agent; its tools are attached by the gateway from the services it names."""
    return FunctionAgent(
        name="calculator",
        description="Answers arithmetic questions by calling calculator tools.",
        system_prompt="You are a careful calculator. Use the tools for every operation.",
        tools=[],
        llm=scripted_llm(),
    )
