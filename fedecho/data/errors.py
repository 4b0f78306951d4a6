"""Errors for bad input data: always name the file and the problem."""

from __future__ import annotations

from collections.abc import Sequence

from fedecho.data.schema import DataIssue

__all__ = ["EchoDataError"]


class EchoDataError(ValueError):
    """Bad input data. ``issues`` lists every problem found (one or many), each with its path."""

    def __init__(self, issues: DataIssue | Sequence[DataIssue], context: str = "") -> None:
        self.issues: list[DataIssue] = [issues] if isinstance(issues, DataIssue) else list(issues)
        if not self.issues:
            raise ValueError("EchoDataError needs at least one DataIssue")
        head = f"{context}: " if context else ""
        if len(self.issues) == 1:
            message = f"{head}{self.issues[0]}"
        else:
            lines = "\n".join(f"  - {issue}" for issue in self.issues[:50])
            more = f"\n  ... and {len(self.issues) - 50} more" if len(self.issues) > 50 else ""
            message = f"{head}{len(self.issues)} problems:\n{lines}{more}"
        super().__init__(message)

    @classmethod
    def at(cls, path: object, reason: str) -> EchoDataError:
        """Shorthand for one problem with one file."""
        return cls(DataIssue(str(path), reason))
