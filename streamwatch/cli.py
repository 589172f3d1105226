"""The ``streamwatch`` command: one sub-command per piece of the product.

Each command lives in its own module with ``register(subparsers)``; modules keep their
top-level imports light so ``streamwatch --help`` stays fast (torch loads only when used).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streamwatch import __version__
from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)

# Add a module here to add its commands. Order = order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "simulators.cli",
    "streamwatch.commands.detect",
    "streamwatch.commands.evaluate",
    "streamwatch.commands.bench",
    "dashboards.cli",
    "streamwatch.commands.demo",
)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value`` lines (extra fields appended)."""

    _std = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={record.getMessage()!r}",
        ]
        for key, value in record.__dict__.items():
            if key not in self._std and not key.startswith("_"):
                parts.append(f"{key}={value}")
        if record.exc_info:
            parts.append("exc=" + repr(self.formatException(record.exc_info)))
        return " ".join(parts)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (tests swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(level: str) -> None:
    handler = _StderrHandler()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamwatch",
        description="Streaming anomaly detection for ICU vitals and industrial sensors.",
    )
    parser.add_argument("--version", action="version", version=f"streamwatch {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        result = args.func(args)
    except StreamwatchError as exc:
        print(f"streamwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamwatch {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
