"""How every `gx bench` command checks its counts and prints its figures."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["Report", "add_benchmark", "print_report", "require_positive", "table"]

Report = dict[str, Any]


def add_benchmark(
    bench_subparsers: argparse._SubParsersAction, name: str, summary: str, doc: str | None
) -> argparse.ArgumentParser:
    """Add a `gx bench NAME` command described by its module's docstring, with `--json`."""
    parser: argparse.ArgumentParser = bench_subparsers.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Exit with a message naming the first option among `names` that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')}: expected > 0, found {value}")


def print_report(report: Report, as_json: bool) -> None:
    """Print the figures: one JSON object, or an aligned table for people."""
    print(json.dumps(report) if as_json else table(report))


def table(report: Report) -> str:
    """The figures as `name  value` lines, numbers with thousands separators."""
    width = max(len(k) for k in report)
    lines = []
    for key, value in report.items():
        if isinstance(value, bool | str) or value is None:
            shown = str(value)
        elif isinstance(value, dict | list):
            shown = json.dumps(value)
        else:
            shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)
