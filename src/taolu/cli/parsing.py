"""argparse as a newcomer needs it: a mistyped flag, choice or command gets "did you mean",
and the error comes with the usage of the command it was given to."""

from __future__ import annotations

import argparse

from taolu.errors import did_you_mean


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose commands (made by add_subparsers, which uses this class too)
    refuse unknown arguments themselves: plain argparse passes them up to `taolu`, which
    shows its own usage instead of the command's and guesses nothing."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return namespace, extras

    def _unrecognized(self, extras: list[str]) -> str:
        flags = [item for item in extras if item.startswith("-") and len(item) > 1]
        if not flags:
            return f"unexpected argument(s): {' '.join(extras)}"
        known = [flag for action in self._actions for flag in action.option_strings]
        parts = []
        for item in flags:
            flag = item.split("=", 1)[0]
            hint = did_you_mean(flag, known)
            parts.append(f"{flag}; {hint}" if hint else flag)
        help_hint = f"`{self.prog} --help` lists them"
        return f"unrecognized option {', '.join(parts)} ({help_hint})"

    # argparse has no public hook for a value outside `choices` (a command name included);
    # this is where it checks one. Python 3.14's suggest_on_error does the same in the same
    # place; this keeps 3.10-3.13 in step.
    def _check_value(self, action: argparse.Action, value: object) -> None:
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(str(value), action.choices)
            if hint:
                allowed = ", ".join(str(choice) for choice in action.choices)
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r}; {hint} (one of {allowed})"
                )
        super()._check_value(action, value)
