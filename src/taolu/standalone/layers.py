"""A network written out as the code that builds it: `nn.Sequential(nn.Conv2d(1, 32, 3), ...)`,
each layer's arguments read from its own `extra_repr` and pared down to those that differ
from the defaults (checked by building the layer again), so the script reads as a person
would write it."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field

from torch import nn

from taolu.models.nets import Residual

INDENT = "    "
# taolu's own layer classes a script may carry with it, by name: their source is copied in.
PORTABLE_CLASSES: dict[str, type[nn.Module]] = {"Residual": Residual}


@dataclass
class WrittenNet:
    """A network as code: one expression, and the class definitions it needs."""

    expression: str | None  # None when some layer has no plain form
    classes: list[str] = field(default_factory=list)  # source of taolu classes it uses
    unwritten: list[str] = field(default_factory=list)  # layer types with no plain form


def write_network(model: nn.Module) -> WrittenNet:
    """`model` (an nn.Sequential of torch.nn layers, and taolu's Residual) as one expression."""
    written = WrittenNet(None)
    expression = _write(model, 0, written)
    written.expression = None if written.unwritten else expression
    return written


def _write(module: nn.Module, depth: int, written: WrittenNet) -> str:
    name = type(module).__name__
    if isinstance(module, nn.Sequential):
        inner = INDENT * (depth + 1)
        children = "".join(f"{inner}{_write(c, depth + 1, written)},\n" for c in module)
        return f"nn.Sequential(\n{children}{INDENT * depth})"
    if name in PORTABLE_CLASSES and type(module) is PORTABLE_CLASSES[name]:
        source = inspect.getsource(PORTABLE_CLASSES[name])
        if source not in written.classes:
            written.classes.append(source)
        return f"{name}({_write(module.block, depth, written)})"
    call = layer_call(module)
    if call is None:
        written.unwritten.append(name)
        return name
    return call


def layer_call(module: nn.Module) -> str | None:
    """`nn.Name(args)` that builds a layer like `module`, or None when its printed form cannot
    be read back (not a torch.nn class, or a repr that is not constructor arguments)."""
    layer_class = type(module)
    if getattr(nn, layer_class.__name__, None) is not layer_class or module._modules:
        return None
    arguments = _split_arguments(module.extra_repr())
    if arguments is None or _built_repr(layer_class, arguments) != module.extra_repr():
        return None
    arguments = _positional(layer_class, _pared(layer_class, arguments, module.extra_repr()))
    if _built_repr(layer_class, arguments) != module.extra_repr():
        return None
    return f"nn.{layer_class.__name__}({', '.join(arguments)})"


def _positional(layer_class: type, arguments: list[str]) -> list[str]:
    """Leading keyword arguments for required parameters written by position, as the
    tutorial writes them: nn.Conv2d(1, 32, 3, padding=1), nn.Linear(1152, 10)."""
    required = [
        name
        for name, parameter in inspect.signature(layer_class).parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    written = []
    for index, argument in enumerate(arguments):
        key, equals, value = argument.partition("=")
        in_order = len(written) == index and index < len(required) and key == required[index]
        written.append(value if equals and in_order else argument)
    return written


def _pared(layer_class: type, arguments: list[str], wanted: str) -> list[str]:
    """Drop each keyword argument the layer builds the same without; write (3, 3) as 3."""
    for argument in list(arguments):
        trial = [a for a in arguments if a is not argument]
        if "=" in argument and _built_repr(layer_class, trial) == wanted:
            arguments = trial
    for index, argument in enumerate(arguments):
        key, _, value = argument.rpartition("=")
        literal = ast.literal_eval(value)
        if isinstance(literal, tuple) and literal and len(set(literal)) == 1:
            shorter = f"{key}={literal[0]!r}" if key else repr(literal[0])
            trial = [*arguments[:index], shorter, *arguments[index + 1 :]]
            if _built_repr(layer_class, trial) == wanted:
                arguments = trial
    return arguments


def _built_repr(layer_class: type, arguments: list[str]) -> str | None:
    positional, keywords = [], {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals and key.isidentifier():
            keywords[key] = ast.literal_eval(value)
        else:
            positional.append(ast.literal_eval(argument))
    try:
        return layer_class(*positional, **keywords).extra_repr()
    except (TypeError, ValueError, RuntimeError):
        return None


def _split_arguments(text: str) -> list[str] | None:
    """`extra_repr` text split at its top-level commas; None unless every part is a literal
    (positional) or key=literal."""
    parts, depth, start, quote = [], 0, 0, ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    parts = [part for part in parts if part]
    for part in parts:
        key, equals, value = part.partition("=")
        try:
            ast.literal_eval(value if equals and key.isidentifier() else part)
        except (ValueError, SyntaxError):
            return None
    return parts
