"""Demo tools for tool services: plain arithmetic, deterministic and offline.

`tools` has all four operations (one calculator service); `additive_tools` and
`multiplicative_tools` split them so an agent can use two tool services at once.
"""

from llama_index.core.tools import FunctionTool


def _tidy(value: float) -> int | float:
    """7.0 -> 7, so answers read like arithmetic rather than floating point."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def add(a: float, b: float) -> int | float:
    """Add two numbers: a + b."""
    return _tidy(a + b)


def subtract(a: float, b: float) -> int | float:
    """Subtract b from a: a - b."""
    return _tidy(a - b)


def multiply(a: float, b: float) -> int | float:
    """Multiply two numbers: a * b."""
    return _tidy(a * b)


def divide(a: float, b: float) -> int | float:
    """Divide a by b: a / b (b must not be zero)."""
    return _tidy(a / b)


def _tool(fn) -> FunctionTool:
    return FunctionTool.from_defaults(fn=fn)


additive_tools = [_tool(add), _tool(subtract)]
multiplicative_tools = [_tool(multiply), _tool(divide)]
tools = [*additive_tools, *multiplicative_tools]
