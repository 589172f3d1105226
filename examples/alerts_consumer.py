"""Read streamwatch alerts from Kafka and print one line per alert event.

Standalone example for other services (needs only kafka-python):

    python examples/alerts_consumer.py --bootstrap-servers 127.0.0.1:9092 --from-beginning

Each record is validated against the shipped JSON Schema when ``jsonschema`` and the
``streamwatch`` package (which ships ``schemas/alert.v1.json``) are importable; otherwise
only ``"v" == 1`` and the printed fields are checked. Delivery is at-least-once: after a
detector restart an event may arrive again, and is dropped by (alert_id, event, seq).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

SEEN_MAX = 100_000  # event keys kept for dropping duplicates (oldest forgotten first)


def check_version(alert: Any) -> None:
    if not isinstance(alert, dict) or alert.get("v") != 1:
        raise ValueError(f"not a version-1 alert: {str(alert)[:80]!r}")
    if not {"alert_id", "event", "stream_id", "severity", "onset_ts", "explanation"} <= set(alert):
        raise ValueError("alert lacks a required field")


def load_validator() -> Callable[[Any], None]:
    try:
        import importlib.resources

        import jsonschema

        path = importlib.resources.files("streamwatch") / "schemas" / "alert.v1.json"
        schema = jsonschema.Draft202012Validator(json.loads(path.read_text()))
    except ImportError as exc:
        print(f"{exc.name} not importable: checking v == 1 only", file=sys.stderr)
        return check_version

    def validate(alert: Any) -> None:
        error = jsonschema.exceptions.best_match(schema.iter_errors(alert))
        if error is not None:
            raise ValueError(f"{error.json_path}: {error.message}")

    return validate


def parse_json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # kept as text: the validator refuses it with the reason
        return raw.decode("utf-8", "replace")


def line(alert: dict[str, Any]) -> str:
    onset = datetime.fromtimestamp(alert["onset_ts"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"{alert['event']:<6} {alert['severity']:<8} {alert['stream_id']} onset={onset} "
            f"alert_id={alert['alert_id']} {alert['explanation'].get('summary', '')}")


def main() -> int:
    p = argparse.ArgumentParser(description="Print streamwatch alert events, one per line.")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092", metavar="HOST:PORT")
    p.add_argument("--topic", default="streamwatch.alerts")
    p.add_argument("--group", default="alerts-consumer-example", help="consumer group id")
    p.add_argument("--from-beginning", action="store_true",
                   help="a group with no committed offset starts at the oldest record")
    p.add_argument("--max-records", type=int, metavar="N", help="stop after N records (tests)")
    p.add_argument("--connect-timeout-s", type=float, default=10.0, metavar="S",
                   help="give up when no broker answers within S seconds (10)")
    args = p.parse_args()
    if not 0 < args.connect_timeout_s < float("inf"):
        p.error(f"--connect-timeout-s must be a positive number of seconds, got {args.connect_timeout_s}")
    if args.max_records is not None and args.max_records < 1:
        p.error(f"--max-records must be >= 1, got {args.max_records}")

    validate = load_validator()
    try:
        consumer = KafkaConsumer(
            args.topic, bootstrap_servers=args.bootstrap_servers, group_id=args.group,
            session_timeout_ms=6000, enable_auto_commit=False, value_deserializer=parse_json,
            bootstrap_timeout_ms=int(args.connect_timeout_s * 1000),
            auto_offset_reset="earliest" if args.from_beginning else "latest")
    except KafkaError as exc:  # no broker answered (NoBrokersAvailable, a timeout)
        print(f"cannot reach Kafka at {args.bootstrap_servers} ({exc}): start the broker, or "
              "pass --bootstrap-servers HOST:PORT of a running one", file=sys.stderr)
        return 2
    seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()
    left = args.max_records if args.max_records is not None else float("inf")
    try:
        while left > 0:
            batch = [r for part in consumer.poll(timeout_ms=1000).values() for r in part]
            handled = batch[: int(min(left, len(batch)))]
            for rec in handled:
                left -= 1
                try:
                    validate(rec.value)
                except ValueError as exc:  # reported, never dropped silently
                    print(f"refused {rec.topic}/{rec.partition}@{rec.offset}: {exc}", file=sys.stderr)
                    continue
                key = (rec.value["alert_id"], rec.value["event"], rec.value.get("seq", 0))
                if key not in seen:  # else: an at-least-once replay already printed
                    seen[key] = None
                    if len(seen) > SEEN_MAX:
                        seen.popitem(last=False)
                    print(line(rec.value), flush=True)
            if batch and len(handled) == len(batch):  # positions are past the whole batch
                consumer.commit()  # after printing: a crash re-reads, never loses
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
