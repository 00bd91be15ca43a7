"""The ddbcache command: info, doctor, stats, flush; and the counters it reads."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks import cli
from ddbcache_hooks._redis_server import RedisServer, free_port
from tests.conftest import NO_SETTLE, make_table


def ddbcache(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DDBCACHE_"):
            monkeypatch.delenv(name)


def test_info_shows_effective_configuration_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DDBCACHE_ENABLED", "1")
    monkeypatch.setenv("DDBCACHE_REDIS_URL", "rediss://app:s3cret@cache.example:6380/0")
    monkeypatch.setenv("DDBCACHE_TTL", "60")
    monkeypatch.setenv("DDBCACHE_SIGNING_KEY", "0123456789abcdef0123")
    code, out = ddbcache("info")
    assert code == 0
    assert "environment activation: yes" in out
    assert "rediss://app:****@cache.example:6380/0" in out and "s3cret" not in out
    assert "0123456789abcdef" not in out and "****" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["ttl"] == ["60", "DDBCACHE_TTL"]
    assert rows["scan_admission"] == ["2", "default"]


def test_info_masks_a_password_given_in_the_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDBCACHE_REDIS_URL", "redis://cache.example:6379/0?password=s3cret&db=1")
    code, out = ddbcache("info")
    assert code == 0 and "redis: redis://cache.example:6379/0?password=****&db=1" in out
    assert "s3cret" not in out


def test_info_reports_bad_variables(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("DDBCACHE_TTL", "abc")
    code, _ = ddbcache("info")
    assert code == 2 and "DDBCACHE_TTL" in capsys.readouterr().err


def test_doctor_healthy(
    moto_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    make_table(boto3.Session(region_name="us-east-1").client("dynamodb"), "orders")
    code, out = ddbcache("doctor", "--redis-url", redis_server.url, "--table", "orders")
    assert code == 0, out
    assert "Redis 7" in out or "Valkey" in out
    assert "standalone" in out and "DescribeTable allowed on orders" in out
    assert "all checks passed" in out


def test_doctor_reports_the_memory_policy_and_a_replica(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    import redis

    from ddbcache_hooks._redis_server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    args = ["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]
    with RedisServer(extra_args=args) as server:
        code, out = ddbcache("doctor", "--redis-url", server.url)
        assert code == 0, out
        from ddbcache_hooks.doctor import POLICIES

        assert "of 64.0 MiB, maxmemory-policy noeviction: " + POLICIES["noeviction"] in out
        with contextlib.closing(redis.Redis(port=server.port)) as admin:
            admin.execute_command("REPLICAOF", "127.0.0.1", free_port())
        code, out = ddbcache("doctor", "--redis-url", server.url)
        assert code == 1, out
        assert "is a slave, not a primary" in out


def test_doctor_reports_cluster_mode(
    moto_url: str, redis_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    code, out = ddbcache("doctor", "--redis-url", redis_cluster.url)
    assert code == 0, out
    assert "cluster mode with 3 primaries" in out


def test_doctor_broken_redis_and_missing_table(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    code, out = ddbcache(
        "doctor", "--redis-url", f"redis://127.0.0.1:{free_port()}", "--table", "nope"
    )
    assert code == 1
    assert "FAIL  connect: cannot connect to Redis" in out
    assert "FAIL  tables" in out and "ResourceNotFoundException" in out
    assert "2 problem(s) found" in out


def test_doctor_without_redis_url(capsys: Any) -> None:
    code, _ = ddbcache("doctor")
    assert code == 1 and "DDBCACHE_REDIS_URL" in _


def test_doctor_tls(tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """rediss:// URLs work: a server with a TLS port and a throwaway certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, f"openssl could not make a test certificate: {made.stderr!r}"
    tls_port = free_port()
    tls = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-auth-clients",
        "no",
    ]
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    with RedisServer(extra_args=tls):
        url = f"rediss://127.0.0.1:{tls_port}?ssl_ca_certs={cert}"
        code, out = ddbcache("doctor", "--redis-url", url)
        assert code == 0, out
        assert f"rediss://127.0.0.1:{tls_port}" in out and "ok    server" in out
        plain = f"redis://127.0.0.1:{tls_port}"  # TLS port spoken to without TLS: a clear failure
        code, out = ddbcache("doctor", "--redis-url", plain)
        assert code == 1 and "FAIL  connect" in out


def test_stats_aggregate_across_processes(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    first = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, metrics_flush_s=1
    )
    other = boto3.Session(region_name="us-east-1")
    second = ddbcache_hooks.register(
        other, redis_server.url, namespace=namespace, metrics_flush_s=1
    )
    try:
        c1, c2 = session.client("dynamodb"), other.client("dynamodb")
        make_table(c1, "items")
        for c in (c1, c2, c1):
            c.get_item(TableName="items", Key={"pk": {"S": "a"}})
        first._flusher.flush()
        second._flusher.flush()
        code, out = ddbcache("stats", "--redis-url", redis_server.url, "--namespace", namespace)
        assert code == 0
        assert "sum of 2 process(es), 2 live" in out
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}
        assert rows["hits"] == ["2"] and rows["misses"] == ["1"] and "ItemCacheHits" not in rows
        assert rows["items"][:2] == ["2", "1"]  # the table's row: hits, misses
        assert "hit ratio: 66.7% (2 hits, 1 misses)" in out
    finally:
        first.unregister()
        second.unregister()
    code, out = ddbcache("stats", "--redis-url", redis_server.url, "--namespace", "nobody-here")
    assert code == 0 and "no process reports counters" in out


def test_flush_table_keeps_other_tables_and_namespaces(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    mine = ddbcache_hooks.register(session, redis_server.url, namespace=namespace)
    other_session = boto3.Session(region_name="us-east-1")
    theirs = ddbcache_hooks.register(other_session, redis_server.url, namespace=namespace + "x")
    try:
        c, o = session.client("dynamodb"), other_session.client("dynamodb")
        make_table(c, "aaa")
        make_table(c, "bbb")
        key = {"pk": {"S": "k"}}
        for client in (c, o):
            for table in ("aaa", "bbb"):
                client.get_item(TableName=table, Key=key)
        code, out = ddbcache(
            "flush",
            "--redis-url",
            redis_server.url,
            "--namespace",
            namespace,
            "--table",
            "aaa",
            "--yes",
        )
        assert code == 0 and "dropped table 'aaa'" in out
        assert "CacheMetadata" not in c.get_item(TableName="aaa", Key=key)
        assert "CacheMetadata" in c.get_item(TableName="bbb", Key=key)
        assert "CacheMetadata" in o.get_item(TableName="aaa", Key=key)  # other namespace untouched
        code, out = ddbcache(
            "flush", "--redis-url", redis_server.url, "--namespace", namespace, "--yes"
        )
        assert code == 0
        assert "CacheMetadata" not in c.get_item(TableName="bbb", Key=key)
        assert "CacheMetadata" in o.get_item(TableName="bbb", Key=key)
    finally:
        mine.unregister()
        theirs.unregister()


def test_flush_asks_for_confirmation(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, _ = ddbcache("flush", "--redis-url", redis_server.url, "--namespace", "zz")
    assert code == 2  # not a terminal and no --yes: refused

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out = ddbcache("flush", "--redis-url", redis_server.url, "--namespace", "zz")
    assert code == 1 and "nothing dropped" in out


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddbcache_hooks", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for command in ("info", "doctor", "stats", "flush", "demo"):
        assert command in result.stdout


def test_opentelemetry_export(session: boto3.Session, real_redis: Any, namespace: str) -> None:
    metrics_sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    from opentelemetry import metrics

    reader = export.InMemoryMetricReader()
    metrics.set_meter_provider(metrics_sdk.MeterProvider(metric_readers=[reader]))
    registration = ddbcache_hooks.register(session, real_redis.client(), namespace=namespace)
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        for _ in range(3):
            c.get_item(TableName="items", Key={"pk": {"S": "a"}})
        data = reader.get_metrics_data()
        points = {
            metric.name: point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points
            if point.attributes.get("ddbcache.namespace") == namespace
        }
        assert points["ddbcache.item_hits"] == 2 and points["ddbcache.item_misses"] == 1
        assert points["ddbcache.hits"] == registration.stats()["hits"]
        assert "ddbcache.rcu_saved" in points
    finally:
        registration.unregister()


# --- one line for an expected failure, through the installed console script -------------

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def console(*argv: str, program: str = "ddbcache", **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, running this tree's package."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    return subprocess.run(
        [str(BIN / program), *argv],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def stopped_redis_url() -> str:
    """The URL of a real server that was started, then stopped."""
    from tests.conftest import _binary

    server = RedisServer(_binary()).start()
    url = server.url
    server.stop()
    return url


@pytest.fixture
def refusing_url(redis_server: RedisServer) -> Any:
    """A Redis ACL user (with a password) that may run everything but SCAN."""
    import uuid

    import redis

    user, password = "cli" + uuid.uuid4().hex[:8], "pw" + uuid.uuid4().hex[:8]
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-scan"
    )
    try:
        yield user, password, f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0"
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


@pytest.mark.parametrize(
    "command",
    [
        ["flush", "--yes"],
        ["stats"],
        ["streams", "--table", "t"],
        ["get", "--table", "t", "--key", '{"pk": {"S": "a"}}'],
    ],
)
def test_stopped_redis_is_one_line_and_a_failure(
    stopped_redis_url: str, command: list[str]
) -> None:
    result = console(*command, "--redis-url", stopped_redis_url, AWS_DEFAULT_REGION="us-east-1")
    assert result.returncode == 2 and result.stdout == ""
    port = stopped_redis_url.rsplit(":", 1)[1].split("/")[0]
    assert result.stderr.splitlines() == [
        f"ddbcache {command[0]}: cannot connect to Redis: Could not connect to Redis at "
        f"{stopped_redis_url}: Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    ]


def test_doctor_against_a_stopped_redis_fails_naming_it(stopped_redis_url: str) -> None:
    """doctor is a report: the Redis check is one FAIL line, the exit non-zero, no traceback."""
    result = console(
        "doctor",
        "--redis-url",
        stopped_redis_url,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:1",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert failures[0].startswith("  FAIL  connect: cannot connect to Redis: Could not connect")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("command", "status", "said"),
    [
        (["flush", "--yes"], 1, "Redis refused a command: "),
        (["stats"], 2, "cannot read the counters: "),
    ],
)
def test_refused_command_is_one_line_and_a_failure(
    refusing_url: tuple[str, str, str], command: list[str], status: int, said: str
) -> None:
    _, password, url = refusing_url
    result = console(*command, "--redis-url", url, "--namespace", "refused")
    assert result.returncode == status, result.stderr
    (line,) = result.stderr.splitlines()  # the server's own words in the middle
    assert line.startswith(f"ddbcache {command[0]}: {said}")
    assert "no permissions to run the 'scan' command" in line
    assert password not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["info"], ["stats"]])
def test_a_pipe_closed_early_ends_quietly(redis_server: RedisServer, command: list[str]) -> None:
    """``ddbcache stats | head -1``: the reader is gone before the output is written."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.Popen(
            [str(BIN / "ddbcache"), *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DDBCACHE_REDIS_URL": redis_server.url},
            text=True,
        )
    finally:
        os.close(write_end)
    _, err = process.communicate(timeout=60)
    assert err == "" and process.returncode == 141  # as a tool that SIGPIPE ended


@pytest.mark.parametrize("program", ["ddbcache", "ddbcache-run"])
def test_version(program: str) -> None:
    result = console("--version", program=program)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{program} (ddbcache-hooks) {ddbcache_hooks.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["demo", "--operations", "0"],
            "ddbcache demo: argument --operations: expected a positive whole number, got '0' "
            "(see ddbcache demo --help)",
        ),
        (
            ["flush", "--yes", "--redis-url", "http://example.com"],
            "ddbcache flush: cannot connect to Redis: ",
        ),
        (
            ["streams", "--table", "t", "--poll-ms", "-1"],
            "ddbcache streams: argument --poll-ms: expected a positive whole number, got '-1' "
            "(see ddbcache streams --help)",
        ),
    ],
)
def test_bad_argument_is_one_line(argv: list[str], message: str) -> None:
    result = console(*argv)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_info_names_unknown_variables_as_the_application_does() -> None:
    result = console("info", DDBCACHE_TTLL="5", DDBCACHE_TTL="60")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "ddbcache-hooks: unknown variable DDBCACHE_TTLL is ignored; did you mean DDBCACHE_TTL?"
    ]
    assert "DDBCACHE_TTL" in result.stdout and "DDBCACHE_TTLL" not in result.stdout


def test_info_and_the_application_read_booleans_alike() -> None:
    shown = {"Yes": "yes", "off": "no (DDBCACHE_ENABLED='off')"}
    for value, state in shown.items():
        result = console("info", DDBCACHE_ENABLED=value, DDBCACHE_REDIS_URL="redis://h:1")
        assert f"environment activation: {state}" in result.stdout, result.stderr
    without_url = console("info", DDBCACHE_ENABLED="1")
    assert (
        "environment activation: no (DDBCACHE_ENABLED is set but DDBCACHE_REDIS_URL is not)"
        in without_url.stdout
    )
    bad = console("info", DDBCACHE_ENABLED="maybe")
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1] == (
        "ddbcache info: DDBCACHE_ENABLED must be a boolean (1/0, true/false, yes/no, on/off), "
        "got 'maybe'"
    )


def test_ddbcache_run_reads_the_switch_as_the_application_does() -> None:
    show = [sys.executable, "-c", "import os; print(os.environ.get('DDBCACHE_ENABLED'))"]
    off = console(*show, program="ddbcache-run", DDBCACHE_ENABLED="OFF")
    assert off.stdout == "OFF\n"
    assert off.stderr == "ddbcache-run: DDBCACHE_ENABLED=OFF is set: running uncached\n"
    odd = console(*show, program="ddbcache-run", DDBCACHE_ENABLED="maybe")
    assert odd.stdout == "1\n"
    assert odd.stderr.splitlines()[0] == (
        "ddbcache-run: DDBCACHE_ENABLED must be a boolean (1/0, true/false, yes/no, on/off), "
        "got 'maybe'; switching caching on as asked"
    )


def _acl_url(server: RedisServer, rule: list[str]) -> str:
    import redis

    redis.Redis(port=server.port).execute_command("ACL", "SETUSER", *rule)
    return f"redis://{rule[0]}:doctor-pw@{server.host}:{server.port}"


def test_doctor_proves_the_documented_acl_end_to_end(
    moto_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddbcache_hooks import acl
    from tests.servers import documented_acl

    url = _acl_url(redis_server, documented_acl("doc1", "doctor-ok", "doctor-pw"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    monkeypatch.setenv("DDBCACHE_NEAR_CACHE", "max_items=100")
    monkeypatch.setenv("DDBCACHE_METRICS_FLUSH_S", "5")
    code, out = ddbcache("doctor", "--redis-url", url, "--namespace", "doc1", "--streams")
    print(out)
    assert code == 0, out
    for line in (
        f"ok    permissions: the {len(acl.commands())} commands the library sends are allowed",
        "ok    lookup -> lease -> fill",
        "ok    hit: served by the read-only hit script (1 command(s), one round trip)",
        "ok    item invalidation -> miss",
        "ok    near cache message",
        "ok    table drop -> miss",
        "ok    counters flush",
        "ok    streams checkpoint",
        "ok    clean-up",
        "maxmemory-policy",
        "ok    persistence: AOF",
        "ok    round trip: median",
        "standalone, role master",
    ):
        assert line in out
    import redis

    assert redis.Redis(port=redis_server.port).keys("doc1:*") == []  # scratch keys removed


@pytest.mark.parametrize("missing", ["hmget", "publish", "evalsha"])
def test_doctor_names_the_command_a_user_lacks(
    redis_server: RedisServer, missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddbcache_hooks import acl
    from tests.servers import documented_acl

    rule = documented_acl("doc2", f"doctor-{missing}", "doctor-pw", without=missing)
    url = _acl_url(redis_server, rule)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:1")
    code, out = ddbcache("doctor", "--redis-url", url, "--namespace", "doc2")
    print(out)
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("  FAIL  ")]
    redis_failures = [line for line in failures if not line.startswith("  FAIL  tables")]
    assert redis_failures[0].startswith("  FAIL  permissions: ")
    assert f"may not run {missing};" in redis_failures[0] or f"'{missing}'" in redis_failures[0]
    assert acl.setuser("doc2", "<user>", "<password>") in redis_failures[0]
    for line in redis_failures:  # each names the command, or points at the line that does
        assert f"+{missing}" in line or f"may not run {missing}" in line, line
    assert "all checks passed" not in out


def test_acl_prints_the_rule_for_the_namespace() -> None:
    from ddbcache_hooks import acl

    code, out = ddbcache("acl", "--namespace", "shop", "--user", "svc")
    assert code == 0 and out.strip() == acl.setuser("shop", "svc", "<password>")
    assert "~shop:* &shop:invalidations +cluster|slots" in out
    code, out = ddbcache("acl", "--namespace", "shop", "--elasticache")
    assert code == 0 and out.strip() == acl.access_string("shop")
    assert out.startswith("on ~shop:* &shop:invalidations ")


def test_get_prints_what_a_read_would_find_and_changes_nothing(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    # Filled right after its write: without the settle window, it lives its TTL (a
    # loaded machine may take longer than the window between the fill and the read).
    registration = ddbcache_hooks.register(
        session, redis_server.url, namespace=namespace, **NO_SETTLE
    )
    redis = __import__("redis").Redis(port=redis_server.port)

    def dump() -> dict[Any, Any]:
        return {k: (redis.type(k), redis.dump(k)) for k in redis.scan_iter(match=f"{namespace}*")}

    argv = ("get", "--redis-url", redis_server.url, "--namespace", namespace, "--table", "items")
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.put_item(TableName="items", Item={"pk": {"S": "a"}, "b": {"B": b"\x00\xff"}})
        code, out = ddbcache(*argv, "--key", '{"pk": {"S": "a"}}')
        assert code == 0 and "a read would hit           no" in out, out
        client.get_item(TableName="items", Key={"pk": {"S": "a"}})
        before = dump()
        code, out = ddbcache(*argv, "--key", '{"pk": {"S": "a"}}', "--show-item")
        assert code == 0 and "a read would hit           yes" in out
        assert "variants held              1" in out
        assert out.strip().endswith('{"pk": {"S": "a"}, "b": {"B": "AP8="}}')
        assert dump() == before
        code, _ = ddbcache(*argv, "--key", "{pk: a}")
        assert code == 2
    finally:
        registration.unregister()
