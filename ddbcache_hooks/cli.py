"""The ``ddbcache`` command (also ``python -m ddbcache_hooks``) and ``ddbcache-run``.

Commands read the same ``DDBCACHE_*`` variables as environment activation, so
``ddbcache info`` shows what an application started in this environment gets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from .config import OPTIONS, Settings, env_flag, from_environment
from .errors import ConfigurationError

REDIS_URL = "DDBCACHE_REDIS_URL"


class CommandError(Exception):
    """A problem to report in one line, exiting non-zero."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"namespace": args.namespace} if args.namespace else {}
    try:
        return Settings.resolve(overrides, environ=os.environ)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None


def _redis_url(args: argparse.Namespace) -> str:
    url: str = args.redis_url or os.environ.get(REDIS_URL, "")
    if not url:
        raise CommandError(f"no Redis: pass --redis-url or set {REDIS_URL}")
    return url


def _connect(args: argparse.Namespace, settings: Settings) -> Any:
    from .connections import connect

    try:
        return connect(_redis_url(args), settings)
    except Exception as exc:
        raise CommandError(f"cannot connect to Redis: {exc}") from None


# --- info ----------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    from .connections import redact

    try:
        enabled = env_flag("ENABLED")
        from_env = from_environment()
    except ConfigurationError as exc:
        raise CommandError(f"bad setting {exc}") from None
    settings = _settings(args)
    url = args.redis_url or os.environ.get(REDIS_URL)
    state = {None: "no (DDBCACHE_ENABLED unset)", True: "yes", False: "no (DDBCACHE_ENABLED=0)"}
    print(f"environment activation: {state[enabled]}", file=out)
    print(f"redis: {redact(url) if url else '(DDBCACHE_REDIS_URL unset)'}", file=out)
    shown = settings.describe()
    rows = [
        (
            option.name,
            _format(shown[option.name]),
            option.env if option.name in from_env else "default",
        )
        for option in OPTIONS
    ]
    _table(out, ("option", "value", "from"), rows)
    return 0


def _format(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def _table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for n, row in enumerate([headers, *rows]):
        print(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


# --- doctor --------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    problems: list[str] = []

    def check(label: str, action: Callable[[], str]) -> None:
        try:
            detail = action()
        except Exception as exc:
            problems.append(f"{label}: {exc}")
            print(f"  FAIL  {label}: {exc}", file=out)
        else:
            print(f"  ok    {label}: {detail}", file=out)

    settings = _settings(args)
    print("Redis", file=out)
    client: list[Any] = []

    def connect_redis() -> str:
        from .connections import redact

        started = time.perf_counter()
        client.append(_connect(args, settings))
        client[0].ping()
        elapsed_ms = (time.perf_counter() - started) * 1000
        return f"{redact(_redis_url(args))} answered in {elapsed_ms:.1f} ms"

    def describe_auth() -> str:
        from .iam import auth_mode

        return auth_mode(_redis_url(args), settings)

    check("auth", describe_auth)
    check("connect", connect_redis)
    if client:
        check("server", lambda: _server_description(client[0]))
        check("scripts", lambda: _load_scripts(client[0]))
    print("DynamoDB", file=out)
    check("tables", lambda: _check_dynamodb(args.table))
    if problems:
        print(f"\n{len(problems)} problem(s) found", file=out)
        return 1
    print("\nall checks passed", file=out)
    return 0


def _server_description(client: Any) -> str:
    from .connections import is_cluster

    def one(section: str) -> dict[str, Any]:
        info = client.info(section)
        if is_cluster(client) and isinstance(info, dict) and info:
            first = next(iter(info.values()))
            if isinstance(first, dict):  # one answer per node
                return first
        return dict(info)

    info = one("server")
    engine = "Valkey" if "valkey_version" in info else "Redis"
    version = info.get("valkey_version") or info.get("redis_version")
    memory = one("memory")
    policy = memory.get("maxmemory_policy", "?")
    limit = memory.get("maxmemory_human") if memory.get("maxmemory") else "none"
    memory_text = f"maxmemory {limit}, maxmemory-policy {policy}"
    if policy == "noeviction" and memory.get("maxmemory"):
        memory_text += " (when full: misses are not cached; hits and invalidations go on)"
    if is_cluster(client):
        primaries = len(client.get_primaries())
        return f"{engine} {version}, cluster mode with {primaries} primaries; {memory_text}"
    role = one("replication").get("role")
    if role != "master":
        raise RuntimeError(
            f"{engine} {version} is a {role}, not a primary: the cache runs uncached there "
            "(point the URL at the primary endpoint)"
        )
    return f"{engine} {version}, standalone primary; {memory_text}"


def _load_scripts(client: Any) -> str:
    from .scripts import SCRIPTS

    for script in SCRIPTS:
        client.script_load(script.source)
    return f"{len(SCRIPTS)} Lua scripts loaded (EVALSHA allowed)"


def _check_dynamodb(tables: Sequence[str]) -> str:
    import boto3

    client = boto3.Session().client("dynamodb")
    names = tables or client.list_tables(Limit=5).get("TableNames", [])
    for name in names:
        client.describe_table(TableName=name)
    described = f"DescribeTable allowed on {', '.join(names)}" if names else "no tables to describe"
    return f"{client.meta.endpoint_url} ({client.meta.region_name}): {described}"


# --- stats ---------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    from .metrics import aggregate

    settings = _settings(args)
    processes, totals = aggregate(_connect(args, settings), settings.namespace)
    if not processes:
        print(
            f"no process reports counters in namespace {settings.namespace!r} "
            "(set metrics_flush_s / DDBCACHE_METRICS_FLUSH_S in the applications)",
            file=out,
        )
        return 0
    print(f"{processes} process(es) in namespace {settings.namespace!r}", file=out)
    reads = totals.get("hits", 0) + totals.get("misses", 0)
    rows = [(name, f"{value:g}") for name, value in sorted(totals.items())]
    rows.append(("hit ratio", f"{totals.get('hits', 0) / reads:.1%}" if reads else "-"))
    _table(out, ("counter", "total"), rows)
    return 0


# --- flush ---------------------------------------------------------------------------


def cmd_flush(args: argparse.Namespace, out: TextIO) -> int:
    from .connections import redact

    settings = _settings(args)
    what = f"table {args.table!r}" if args.table else "every entry"
    where = f"namespace {settings.namespace!r} at {redact(_redis_url(args))}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"refusing to drop {what} of {where} without --yes")
        answer = input(f"Drop {what} of {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing dropped", file=out)
            return 1
    client = _connect(args, settings)
    deleted = flush(client, settings, args.table)
    print(f"dropped {what} of {where}: {deleted} keys deleted", file=out)
    return 0


def flush(client: Any, settings: Settings, table: str | None) -> int:
    """Drop a namespace, or one table's entries; other namespaces are untouched."""
    from .handlers import drive
    from .keys import KeyLayout, table_name
    from .plan import Invalidation
    from .protocol import Protocol
    from .transport import SyncTransport

    transport = SyncTransport(client)
    layout = KeyLayout(settings.namespace)
    if table is None:
        return transport.scan_delete(layout.namespace_pattern())
    name = table_name(table)
    protocol = Protocol(settings, cluster=transport.cluster)
    # The table in every Region, account and endpoint it was cached from. Replacing
    # the tokens drops every entry at once; deleting the keys frees memory.
    tokens = {_text(key): True for key in client.scan_iter(match=layout.tokens_pattern(name))}
    drive(protocol.deliver(Invalidation(tables=tokens)), transport, lambda t: None)
    return transport.scan_delete(layout.table_pattern(name))


def _text(key: Any) -> str:
    return key.decode("utf-8") if isinstance(key, bytes) else str(key)


# --- streams -------------------------------------------------------------------------


def cmd_streams(args: argparse.Namespace, out: TextIO) -> int:
    """Follow the tables' DynamoDB Streams until SIGINT / SIGTERM (see docs/streams.md)."""
    import signal
    import threading

    from botocore.exceptions import BotoCoreError, ClientError

    from . import metrics
    from .streams import Consumer

    settings = _settings(args)
    try:
        consumer = Consumer(
            args.table,
            _connect(args, settings),
            namespace=settings.namespace,
            lease_ms=args.lease_ms,
            poll_ms=args.poll_ms,
        )
        missing = consumer.check()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except (ClientError, BotoCoreError) as exc:  # credentials, permissions, endpoint
        raise CommandError(f"cannot describe the tables: {exc}") from None
    if missing:
        raise CommandError(f"no enabled stream on {', '.join(missing)}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    flusher = metrics.Flusher(
        consumer.stats,
        consumer.transport.client,
        settings.namespace,
        settings.metrics_flush_s or args.stats_every_s,
    )
    print(f"following the streams of {', '.join(args.table)} as {consumer.owner}", file=out)
    out.flush()
    try:
        consumer.run(stop)
    finally:
        flusher.stop()
        flusher.flush()
    counts = consumer.stats()
    print(
        f"stopped: {counts['stream_records']} records applied, "
        f"{counts['stream_table_drops']} table drops",
        file=out,
    )
    return 0


# --- ddbcache-run --------------------------------------------------------------------


def run_main(argv: Sequence[str] | None = None) -> int:
    """``ddbcache-run [--children] [--redis-url URL] command ...``"""
    parser = argparse.ArgumentParser(
        prog="ddbcache-run",
        description="Run a command with DynamoDB caching switched on from the environment.",
    )
    parser.add_argument("--redis-url", help=f"Redis URL (default: ${REDIS_URL})")
    parser.add_argument(
        "--children",
        action="store_true",
        help="also cache in Python processes the command starts (default: only the command)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    env = dict(os.environ)
    if args.redis_url:
        env[REDIS_URL] = args.redis_url
    if env.get("DDBCACHE_ENABLED", "").strip().lower() in ("0", "false", "no", "off"):
        print("ddbcache-run: DDBCACHE_ENABLED=0 is set: running uncached", file=sys.stderr)
    else:
        env["DDBCACHE_ENABLED"] = "1"
        env["DDBCACHE_RUN_PID"] = str(os.getpid())  # exec keeps the pid: only the command
        if args.children:
            env["DDBCACHE_RUN_CHILDREN"] = "1"
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"ddbcache-run: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - exec does not return


# --- main ----------------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from . import demo

    return demo.run(operations=args.operations, items=args.items, seed=args.seed, out=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddbcache", description="ddbcache-hooks: a read-through Redis cache for DynamoDB."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help=f"Redis URL (default: ${REDIS_URL})")
    common.add_argument("--namespace", help="key namespace (default: $DDBCACHE_NAMESPACE or CC)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "info", parents=[common], help="effective configuration (environment and defaults)"
    ).set_defaults(func=cmd_info)
    doctor = sub.add_parser("doctor", parents=[common], help="check Redis and DynamoDB access")
    doctor.add_argument("--table", action="append", default=[], help="table to DescribeTable")
    doctor.set_defaults(func=cmd_doctor)
    sub.add_parser(
        "stats", parents=[common], help="counters summed over every reporting process"
    ).set_defaults(func=cmd_stats)
    flush_parser = sub.add_parser("flush", parents=[common], help="drop cache entries")
    flush_parser.add_argument("--table", help="only this table's entries")
    flush_parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flush_parser.set_defaults(func=cmd_flush)
    streams = sub.add_parser(
        "streams",
        parents=[common],
        help="apply the tables' DynamoDB Streams as invalidations (runs until stopped)",
    )
    streams.add_argument(
        "--table", action="append", required=True, help="table to follow (repeatable)"
    )
    streams.add_argument("--lease-ms", type=int, default=10_000, help="shard lease (ms)")
    streams.add_argument("--poll-ms", type=int, default=500, help="pause when idle (ms)")
    streams.add_argument(
        "--stats-every-s",
        type=int,
        default=10,
        help="counter flush for `ddbcache stats` (when DDBCACHE_METRICS_FLUSH_S is unset)",
    )
    streams.set_defaults(func=cmd_streams)
    demo = sub.add_parser("demo", help="run a short workload on embedded DynamoDB and Redis")
    demo.add_argument("--operations", type=int, default=2000)
    demo.add_argument("--items", type=int, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args, out or sys.stdout)
    except CommandError as exc:
        print(f"ddbcache {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
