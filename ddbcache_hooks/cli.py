"""The ``ddbcache`` command (also ``python -m ddbcache_hooks``) and ``ddbcache-run``.

Commands read the same ``DDBCACHE_*`` variables as environment activation, so
``ddbcache info`` shows what an application started in this environment gets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from . import acl
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
    """What an application started in this environment gets; bad settings as it reports them.

    Unknown ``DDBCACHE_*`` names are warned about on stderr, as in the application.
    """
    from .connections import redact

    try:
        from_env = from_environment()  # warns of unknown names, once
        enabled = env_flag("ENABLED")
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    settings = _settings(args)
    url = args.redis_url or os.environ.get(REDIS_URL)
    state = {
        None: "no (DDBCACHE_ENABLED unset)",
        True: "yes"
        if os.environ.get(REDIS_URL)
        else f"no (DDBCACHE_ENABLED is set but {REDIS_URL} is not)",
        False: f"no (DDBCACHE_ENABLED={os.environ.get('DDBCACHE_ENABLED', '')!r})",
    }
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
    from . import doctor

    problems: list[str] = []
    lacking: list[str] = []  # what the permissions check found this user may not run
    settings = _settings(args)

    def check(label: str, action: Callable[[], str], cycle: bool = False) -> bool:
        try:
            detail = action()
        except Exception as exc:
            refused = acl.refusal(exc)
            if refused is not None:
                how = acl.fix(refused, settings.namespace)
                detail = f"Redis refused {refused.what} ({exc}); {how}"
            else:
                detail = str(exc) or type(exc).__name__
                if cycle and lacking:  # a script's pcall may take a refusal for another error
                    detail += f" (the user may not run {', '.join(lacking)}: see permissions)"
            problems.append(f"{label}: {detail}")
            print(f"  FAIL  {label}: {detail}", file=out)
            return False
        print(f"  ok    {label}: {detail}", file=out)
        return True

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
        redis = client[0]
        check("server", lambda: doctor.server(redis))
        check("memory", lambda: doctor.memory(redis))
        check("persistence", lambda: doctor.persistence(redis))
        check("round trip", lambda: doctor.round_trip(redis))
        check("layout", lambda: doctor.layout(redis, settings))
        check("scripts", lambda: _load_scripts(redis))
        check("permissions", lambda: doctor.permissions(redis, settings.namespace, lacking))
        print(f"Cache cycle (scratch keys of namespace {settings.namespace!r})", file=out)
        cycle = doctor.Cycle(
            redis,
            settings,
            near=settings.near_cache is not None,
            metrics=bool(settings.metrics_flush_s),
            streams=args.streams,
        )
        failed = False
        for label, step in cycle.steps():
            if failed:
                print(f"  skip  {label}: after the failure above", file=out)
            else:
                failed = not check(label, step, cycle=True)
        check("clean-up", cycle.clean_up)
        check("running applications", lambda: _refusals_reported(redis, settings.namespace))
        _report_principals(redis, settings, out)
    print("DynamoDB", file=out)
    check("tables", lambda: _check_dynamodb(args.table))
    if problems:
        print(f"\n{len(problems)} problem(s) found", file=out)
        return 1
    print("\nall checks passed", file=out)
    return 0


def _load_scripts(client: Any) -> str:
    from .scripts import SCRIPTS
    from .streams.state import SCRIPTS as STREAM_SCRIPTS

    for script in (*SCRIPTS, *STREAM_SCRIPTS):
        client.script_load(script.source)
    return f"{len(SCRIPTS) + len(STREAM_SCRIPTS)} Lua scripts loaded"


def _refusals_reported(client: Any, namespace: str) -> str:
    """What the processes flushing counters (metrics_flush_s) say Redis refused them."""
    from .metrics import aggregate

    totals = aggregate(client, namespace)
    processes = totals.processes
    if not processes:
        return "no running process reports counters (metrics_flush_s): refusals are in their logs"
    refused = int(totals.counters.get("redis_refused", 0))
    if refused:
        raise PermissionError(
            f"{processes} process(es) report {refused} command(s) Redis refused "
            f"(redis_refused; their logs name the command); the rule: "
            f"{acl.setuser(namespace, '<user>', '<password>')}"
        )
    return f"{processes} process(es) ({totals.live} live) report counters, no refused command"


def _check_dynamodb(tables: Sequence[str]) -> str:
    import boto3

    client = boto3.Session().client("dynamodb")
    names = tables or client.list_tables(Limit=5).get("TableNames", [])
    for name in names:
        client.describe_table(TableName=name)
    described = f"DescribeTable allowed on {', '.join(names)}" if names else "no tables to describe"
    return f"{client.meta.endpoint_url} ({client.meta.region_name}): {described}"


# --- acl -----------------------------------------------------------------------------


def cmd_acl(args: argparse.Namespace, out: TextIO) -> int:
    namespace = _settings(args).namespace
    if args.elasticache:
        print(acl.access_string(namespace), file=out)
    else:
        print(acl.setuser(namespace, args.user, "<password>"), file=out)
    return 0


# --- stats ---------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    """Counters summed over every reporting process; ``--watch`` redraws them every second."""
    import json

    from redis.exceptions import RedisError

    from .metrics import Totals, aggregate

    settings = _settings(args)
    client = _connect(args, settings)
    previous: tuple[Totals, float] | None = None
    try:
        while True:
            try:
                totals = aggregate(client, settings.namespace)
            except RedisError as exc:
                raise CommandError(f"cannot read the counters: {exc}") from None
            if args.json:
                print(json.dumps(totals.as_json(settings.namespace)), file=out)
            else:
                if args.watch:
                    out.write("\x1b[H\x1b[2J" if out.isatty() else "\n")
                    print(
                        f"ddbcache stats --watch  {time.strftime('%H:%M:%S')}  "
                        "(redrawn every second; Ctrl-C to leave)\n",
                        file=out,
                    )
                _show_stats(out, totals, settings.namespace, previous)
                print(file=out)
                _report_principals(client, settings, out)
            out.flush()
            if not args.watch:
                return 0
            previous = (totals, time.monotonic())
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


def _show_stats(out: TextIO, totals: Any, namespace: str, previous: Any) -> None:
    """The readable view: who reports, the hit ratio, non-zero counters, table rows."""
    from .metrics import RETAIN_S
    from .stats import TABLE_COUNTERS

    if not totals.processes:
        print(
            f"no process reports counters in namespace {namespace!r} "
            "(set metrics_flush_s / DDBCACHE_METRICS_FLUSH_S in the applications)",
            file=out,
        )
        return
    exited = (
        f", {totals.exited} exited (kept {RETAIN_S // 3600} h after their last report)"
        if totals.exited
        else ""
    )
    print(
        f"namespace {namespace!r}: sum of {totals.processes} process(es), "
        f"{totals.live} live{exited}",
        file=out,
    )
    hits, misses = totals.counters.get("hits", 0), totals.counters.get("misses", 0)
    ratio = totals.hit_ratio()
    shown = f"{ratio:.1%}" if ratio is not None else "- (no cached reads yet)"
    print(f"hit ratio: {shown} ({hits:g} hits, {misses:g} misses)\n", file=out)
    view = totals.as_json(namespace)
    rows = [
        (name, f"{value:g}", *([_rate(name, value, previous)] if previous else []))
        for name, value in view["counters"].items()
        if value
    ]
    if rows:
        _table(out, ("counter", "total", *(["per s"] if previous else [])), rows)
    tables = [
        (table, *(f"{row.get(name, 0):g}" for name in TABLE_COUNTERS))
        for table, row in view["tables"].items()
        if any(row.values())
    ]
    if tables:
        print(file=out)
        _table(out, ("table", *TABLE_COUNTERS), tables)


def _rate(name: str, value: float, previous: tuple[Any, float]) -> str:
    """Change per second since the last redraw (``--watch``); none for a level."""
    from .stats import GAUGES

    before, when = previous
    if name in GAUGES:
        return ""
    return f"{(value - before.counters.get(name, 0)) / max(time.monotonic() - when, 1e-3):.1f}"


def _report_principals(client: Any, settings: Settings, out: TextIO) -> None:
    """How many IAM principals read the namespace (census.py): shared entries, a warning."""
    from redis.exceptions import RedisError

    from .census import live_principals, report

    try:
        shared = settings.isolation == "shared" and live_principals(client, settings.namespace) > 1
        line = report(client, settings.namespace)
    except RedisError as exc:  # a report, not a check: say it and go on
        print(f"  ?     principals: {exc}", file=out)
        return
    print(f"  {'WARN' if shared else 'ok  '}  principals: {line}", file=out)


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


# --- get -------------------------------------------------------------------------------


def cmd_get(args: argparse.Namespace, out: TextIO) -> int:
    """What a GetItem of one key would find in the cache (Registration.peek; reads only)."""
    import base64
    import json

    import boto3
    from botocore.exceptions import BotoCoreError

    from .plugin import register

    try:
        key = json.loads(args.key)
    except ValueError as exc:
        raise CommandError(f"--key is not JSON: {exc}") from None
    variant = {"ProjectionExpression": args.projection} if args.projection else {}
    settings = _settings(args)
    try:
        # A client only names the Region, account and endpoint: it makes no call.
        client = boto3.Session().client("dynamodb")
    except BotoCoreError as exc:
        raise CommandError(f"cannot make a DynamoDB client: {exc}") from None
    try:
        registration = register(client, _redis_url(args), namespace=settings.namespace)
    except Exception as exc:
        raise CommandError(f"cannot connect to Redis: {exc}") from None
    try:
        peek = registration.peek(args.table, key, **variant)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        registration.unregister()

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} s"

    rows = [
        ("table", f"{peek.table.name} ({peek.table.place})"),
        ("cached table", "yes" if peek.cached else "no"),
        ("a read would hit", "yes" if peek.present else "no"),
        ("answer", "no such item" if peek.negative else "item" if peek.present else "-"),
        ("age", seconds(peek.age_s)),
        ("expires in", seconds(peek.ttl_s)),
        ("stale-if-error grace", seconds(peek.grace_s)),
        ("being filled", "yes" if peek.leased else "no"),
        ("settle window", "yes" if peek.settling else "no"),
        ("variants held", str(peek.variants)),
        ("entry size", f"{peek.size} bytes"),
        ("near cache (this process)", "yes" if peek.near else "no"),
    ]
    _table(out, ("what", "found"), rows)
    if args.show_item and peek.item is not None:
        print(json.dumps(peek.item, default=lambda b: base64.b64encode(b).decode()), file=out)
    return 0


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
    followed = [table for table in args.table if table not in missing]
    if not followed:  # each one was named in a warning; the others are followed
        raise CommandError(f"no table can be followed: no enabled stream on {', '.join(missing)}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    flusher = metrics.Flusher(
        consumer.stats,
        consumer.transport.client,
        settings.namespace,
        settings.metrics_flush_s or args.stats_every_s,
    )
    print(f"following the streams of {', '.join(followed)} as {consumer.owner}", file=out)
    out.flush()
    try:
        consumer.run(stop)
    except ValueError as exc:  # the streams went away since the check
        raise CommandError(str(exc)) from None
    finally:
        flusher.stop()  # with a last flush
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
    parser = _Parser(
        prog="ddbcache-run",
        description="Run a command with DynamoDB caching switched on from the environment.",
    )
    _version_argument(parser)
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
    try:
        enabled = env_flag("ENABLED", env)
    except ConfigurationError as exc:
        print(f"ddbcache-run: {exc}; switching caching on as asked", file=sys.stderr)
        enabled = None
    if enabled is False:
        shown = env.get("DDBCACHE_ENABLED", "").strip()
        print(f"ddbcache-run: DDBCACHE_ENABLED={shown} is set: running uncached", file=sys.stderr)
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


def _positive(text: str) -> int:
    """An argparse type: a whole number above 0."""
    value = int(text) if text.strip().isdigit() else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (and exit status 2), like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _version_argument(parser: argparse.ArgumentParser) -> None:
    from ._version import __version__

    parser.add_argument(
        "--version", action="version", version=f"{parser.prog} (ddbcache-hooks) {__version__}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddbcache", description="ddbcache-hooks: a read-through Redis cache for DynamoDB."
    )
    _version_argument(parser)
    common = _Parser(add_help=False)
    common.add_argument("--redis-url", help=f"Redis URL (default: ${REDIS_URL})")
    common.add_argument("--namespace", help="key namespace (default: $DDBCACHE_NAMESPACE or CC)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "info", parents=[common], help="effective configuration (environment and defaults)"
    ).set_defaults(func=cmd_info)
    doctor = sub.add_parser("doctor", parents=[common], help="check Redis and DynamoDB access")
    doctor.add_argument("--table", action="append", default=[], help="table to DescribeTable")
    doctor.add_argument(
        "--streams", action="store_true", help="also write (and delete) a streams checkpoint"
    )
    doctor.set_defaults(func=cmd_doctor)
    acl_parser = sub.add_parser(
        "acl", parents=[common], help="the Redis ACL rule that allows what the library sends"
    )
    acl_parser.add_argument("--user", default="app-cache", help="ACL user name")
    acl_parser.add_argument(
        "--elasticache", action="store_true", help="an ElastiCache --access-string instead"
    )
    acl_parser.set_defaults(func=cmd_acl)
    stats = sub.add_parser(
        "stats", parents=[common], help="counters summed over every reporting process"
    )
    stats.add_argument("--json", action="store_true", help="one JSON object (docs/operations.md)")
    stats.add_argument(
        "--watch",
        action="store_true",
        help="redraw every second until Ctrl-C (--json: a line a second)",
    )
    stats.set_defaults(func=cmd_stats)
    flush_parser = sub.add_parser("flush", parents=[common], help="drop cache entries")
    flush_parser.add_argument("--table", help="only this table's entries")
    flush_parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flush_parser.set_defaults(func=cmd_flush)
    get = sub.add_parser(
        "get", parents=[common], help="what the cache holds for one item (changes nothing)"
    )
    get.add_argument("--table", required=True, help="table name or ARN")
    get.add_argument("--key", required=True, help='primary key as JSON: {"pk": {"S": "1"}}')
    get.add_argument("--projection", help="the ProjectionExpression of the reads to look at")
    get.add_argument("--show-item", action="store_true", help="print the cached item as JSON")
    get.set_defaults(func=cmd_get)
    streams = sub.add_parser(
        "streams",
        parents=[common],
        help="apply the tables' DynamoDB Streams as invalidations (runs until stopped)",
    )
    streams.add_argument(
        "--table", action="append", required=True, help="table to follow (repeatable)"
    )
    streams.add_argument("--lease-ms", type=_positive, default=10_000, help="shard lease (ms)")
    streams.add_argument("--poll-ms", type=_positive, default=500, help="pause when idle (ms)")
    streams.add_argument(
        "--stats-every-s",
        type=_positive,
        default=10,
        help="counter flush for `ddbcache stats` (when DDBCACHE_METRICS_FLUSH_S is unset)",
    )
    streams.set_defaults(func=cmd_streams)
    demo = sub.add_parser("demo", help="run a short workload on embedded DynamoDB and Redis")
    demo.add_argument("--operations", type=_positive, default=2000)
    demo.add_argument("--items", type=_positive, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``ddbcache``: an expected failure ends in one line on stderr and a non-zero exit."""
    args = build_parser().parse_args(argv)
    stream = out or sys.stdout
    return run_command(f"ddbcache {args.command}", lambda: args.func(args, stream), stream, args)


def run_command(
    label: str, command: Callable[[], int], out: TextIO, args: argparse.Namespace | None = None
) -> int:
    """Run one command; turn the failures an operator can expect into one line.

    Exit status: 0 done; 1 failed while running (Redis or AWS refused or failed);
    2 could not start (bad argument or setting, Redis not reachable); 130 interrupted;
    141 (as for SIGPIPE) when the reader of the output went away, silently.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from redis.exceptions import (
        AuthenticationError,
        NoPermissionError,
        RedisError,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    def fail(message: str, status: int) -> int:
        with contextlib.suppress(BrokenPipeError, ValueError):
            print(f"{label}: {message}", file=sys.stderr)
        return status

    try:
        result = command()
        out.flush()
    except BrokenPipeError:
        return _pipe_closed()
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except CommandError as exc:
        return fail(str(exc), 2)
    except ConfigurationError as exc:
        return fail(str(exc), 2)
    except NoPermissionError as exc:
        return fail(f"Redis refused a command: {exc} (the ACL: docs/operations.md)", 1)
    except AuthenticationError as exc:
        return fail(f"Redis refused the credentials of {_where(args)}: {exc}", 1)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return fail(f"Redis at {_where(args)} did not answer: {exc}", 1)
    except ResponseError as exc:
        return fail(f"Redis refused a command: {exc}", 1)
    except RedisError as exc:
        return fail(f"Redis failed: {type(exc).__name__}: {exc}", 1)
    except (ClientError, BotoCoreError) as exc:
        return fail(f"AWS: {exc}", 1)
    return result


def _where(args: argparse.Namespace | None) -> str:
    from .connections import redact

    url = getattr(args, "redis_url", None) or os.environ.get(REDIS_URL, "")
    return redact(url) if url else "(no URL)"


def _pipe_closed() -> int:
    """The reader of stdout went away (``ddbcache stats | head -1``): end quietly."""
    import signal

    try:
        # Later writes (the interpreter's own flush at exit) go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + int(signal.SIGPIPE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
