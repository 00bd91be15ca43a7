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
from tests.conftest import make_table


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
        assert "maxmemory 64.00M, maxmemory-policy noeviction" in out
        assert "misses are not cached; hits and invalidations go on" in out
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
        assert "2 process(es)" in out
        rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:] if line.strip()}
        assert rows["hits"] == "2" and rows["misses"] == "1" and rows["ItemCacheHits"] == "2"
        assert rows["hit"] == "66.7%"
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
