"""A Markdown document under construction: headings, tables, figures saved beside it with numbered
one-line captions, and the number formats the report uses everywhere."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedecho.report.figure import save_figure

__all__ = ["Document", "format_bytes", "format_value", "markdown_table", "plural", "safe_name"]


def format_value(value: Any) -> str:
    """Numbers as the report prints them: integers (and integral floats such as ``num-examples``)
    without decimals, other floats with 4 significant digits, NaN/None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def format_bytes(count: float) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} B"


def plural(count: int, noun: str) -> str:
    """``plural(1, "round")`` -> ``"1 round"``, ``plural(3, "round")`` -> ``"3 rounds"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def safe_name(name: str) -> str:
    """A file-name-safe version of a phase or prediction name (``adapt:view`` -> ``adapt_view``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "unnamed"


def _cell(value: Any) -> str:
    text = format_value(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub-flavoured Markdown table (numbers formatted by :func:`format_value`, ``|`` escaped)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


class Document:
    """Lines of Markdown plus the PNGs written into ``folder`` (the folder that holds report.md)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lines: list[str] = []
        self.figures: list[Path] = []

    def heading(self, level: int, text: str) -> None:
        self.lines += [f"{'#' * level} {text}", ""]

    def paragraph(self, text: str) -> None:
        self.lines += [text, ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.lines += [*markdown_table(header, rows), ""]

    def figure(self, fig: Figure, name: str, caption: str) -> Path:
        """Save ``fig`` as ``<name>.png`` beside the report and embed it with a numbered caption."""
        path = save_figure(fig, self.folder / f"{safe_name(name)}.png")
        self.figures.append(path)
        number = len(self.figures)
        alt = caption.replace("[", "(").replace("]", ")")
        self.lines += [f"![{alt}]({path.name})", "", f"*Figure {number}. {caption}*", ""]
        return path

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"
