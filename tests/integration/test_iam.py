"""IAM authentication end to end: a real server with a TLS listener whose ACL user's password is
the token a deterministic provider made (botocore's signing clock pinned), as ElastiCache
checks it. The library connects with the token, caches, and reconnects when its connections
are dropped or grow too old.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

import ddbcache_hooks
from ddbcache_hooks import cli, iam
from ddbcache_hooks._redis_server import RedisServer, free_port
from ddbcache_hooks.errors import ConfigurationError
from tests.botocore_compat import pin_signing_clock, pin_source
from tests.conftest import REGION, make_table
from tests.servers import RedisCluster, free_cluster_port

USER = "app-user"
CACHE = "my-cache"
ADMIN_PASSWORD = "admin-secret"
PINNED = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
KEY = {"pk": {"S": "a"}}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path]]:
    """A redis-server (from PATH: built with TLS) with a TLS port and a throwaway certificate."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
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
    args = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-auth-clients",
        "no",
    ]
    with RedisServer(extra_args=args) as server:
        yield server, tls_port, cert


@pytest.fixture(scope="module")
def tls_cluster(
    tls_server: tuple[RedisServer, int, Path],
) -> Iterator[tuple[RedisCluster, list[int]]]:
    """A 3-master cluster whose nodes speak TLS to clients and to each other (tls-cluster), so
    the slot map names the TLS ports."""
    cert = tls_server[2]
    tls_ports: list[int] = []

    def node_args(_: int) -> list[str]:
        tls_ports.append(free_cluster_port())
        return [
            "--tls-port",
            str(tls_ports[-1]),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(cert.with_name("key.pem")),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
        ]

    with RedisCluster(masters=3, create="commands", node_args=node_args) as cluster:
        yield cluster, tls_ports


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore signs at a fixed time: the token is reproducible."""
    pin_signing_clock(monkeypatch, lambda: PINNED)


@pytest.fixture
def admin(tls_server: tuple[RedisServer, int, Path]) -> Iterator[redis.Redis]:
    """An administrator on the plain port; the default user needs a password meanwhile, so an
    unauthenticated connection is refused."""
    server, _, _ = tls_server
    conn = redis.Redis(host=server.host, port=server.port, password=None)
    conn.execute_command("ACL", "SETUSER", "default", "on", f">{ADMIN_PASSWORD}")
    conn.close()
    conn = redis.Redis(host=server.host, port=server.port, password=ADMIN_PASSWORD)
    yield conn
    conn.execute_command("ACL", "DELUSER", USER)
    conn.execute_command("ACL", "SETUSER", "default", "on", "nopass")
    conn.close()


def grant(admin: redis.Redis, token: str) -> None:
    admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{token}", "~*", "&*", "+@all")


def user_connections(admin: redis.Redis) -> set[int]:
    return {c["id"] for c in admin.client_list() if c.get("user") == USER}


def iam_url(tls_server: tuple[RedisServer, int, Path]) -> str:
    _, port, cert = tls_server
    return (
        f"rediss://{USER}@127.0.0.1:{port}/?iam=1&cache_name={CACHE}&region={REGION}"
        f"&ssl_ca_certs={cert}"
    )


def test_connects_with_the_token_caches_and_reconnects(
    session: boto3.Session,
    tls_server: tuple[RedisServer, int, Path],
    admin: redis.Redis,
    pinned_clock: None,
    namespace: str,
) -> None:
    expected = iam.ElastiCacheIAMProvider(USER, CACHE, REGION, session=session).generate_token()
    grant(admin, expected)

    registration = ddbcache_hooks.register(session, iam_url(tls_server), namespace=namespace)
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.put_item(TableName="items", Item={**KEY, "v": {"N": "1"}})
        assert "CacheMetadata" not in client.get_item(TableName="items", Key=KEY)
        assert client.get_item(TableName="items", Key=KEY)["CacheMetadata"]["CacheHit"] is True
        before = user_connections(admin)
        assert before, "the library's connections authenticate as the IAM user"

        admin.execute_command("CLIENT", "KILL", "USER", USER)
        assert user_connections(admin) == set()
        hit = client.get_item(TableName="items", Key=KEY)
        assert hit["CacheMetadata"]["CacheHit"] is True and hit["Item"]["v"] == {"N": "1"}
        after = user_connections(admin)
        assert after and not after & before  # new connections, authenticated with the token

        client.put_item(TableName="items", Item={**KEY, "v": {"N": "2"}})
        assert client.get_item(TableName="items", Key=KEY)["Item"]["v"] == {"N": "2"}
        assert registration.stats()["errors"] == 0
    finally:
        registration.unregister()


def test_connections_older_than_the_limit_reconnect_on_checkout(
    session: boto3.Session,
    tls_server: tuple[RedisServer, int, Path],
    admin: redis.Redis,
    pinned_clock: None,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(iam.IAMSSLConnection, "clock", staticmethod(lambda: now[0]))
    grant(admin, iam.ElastiCacheIAMProvider(USER, CACHE, REGION, session=session).token())
    registration = ddbcache_hooks.register(
        session,
        f"rediss://127.0.0.1:{tls_server[1]}/?ssl_ca_certs={tls_server[2]}",
        namespace=namespace,
        iam_user=USER,
        iam_cache_name=CACHE,
    )
    try:
        client = session.client("dynamodb")
        make_table(client, "items")
        client.get_item(TableName="items", Key=KEY)
        first = user_connections(admin)

        now[0] += iam.MAX_CONNECTION_AGE_S - 1
        client.get_item(TableName="items", Key=KEY)
        assert user_connections(admin) == first  # young enough: kept

        now[0] += 1
        assert client.get_item(TableName="items", Key=KEY)["CacheMetadata"]["CacheHit"] is True
        assert not user_connections(admin) & first  # replaced before the 12-hour limit
    finally:
        registration.unregister()


@pytest.mark.aio
def test_async_registration_connects_with_the_token_and_reconnects(
    tls_server: tuple[RedisServer, int, Path],
    admin: redis.Redis,
    pinned_clock: None,
    moto_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aioboto3

    now = [0.0]
    monkeypatch.setattr(iam.AsyncIAMSSLConnection, "clock", staticmethod(lambda: now[0]))
    # The async path signs with the default credential chain (here: the environment's keys).
    grant(admin, iam.ElastiCacheIAMProvider(USER, CACHE, REGION).token())

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session, iam_url(tls_server), namespace=namespace
        )
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as client:
                await client.create_table(
                    TableName="items",
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                await client.put_item(TableName="items", Item={**KEY, "v": {"N": "1"}})
                assert "CacheMetadata" not in await client.get_item(TableName="items", Key=KEY)
                before = user_connections(admin)
                assert before
                admin.execute_command("CLIENT", "KILL", "USER", USER)
                # redis.asyncio may notice the dropped connection only by using it: that call
                # is answered by DynamoDB, and the next one reconnects with the token.
                answer = await client.get_item(TableName="items", Key=KEY)
                assert answer["Item"]["v"] == {"N": "1"}
                errors = registration.stats()["errors"]
                hit = await client.get_item(TableName="items", Key=KEY)
                assert hit["CacheMetadata"]["CacheHit"] is True
                after = user_connections(admin)
                assert after and not after & before

                now[0] += iam.MAX_CONNECTION_AGE_S
                hit = await client.get_item(TableName="items", Key=KEY)
                assert hit["CacheMetadata"]["CacheHit"] is True
                # The connection the hit took was replaced at the age limit; one the pool
                # did not hand out (background work may have opened a second) is replaced
                # at its own next checkout.
                now_open = user_connections(admin)
                assert now_open - after and len(now_open & after) < len(after)
                assert registration.stats()["errors"] == errors  # without an error
        finally:
            registration.unregister()

    asyncio.run(main())


def test_cluster_nodes_authenticate_with_the_token_and_reconnect(
    session: boto3.Session,
    tls_cluster: tuple[RedisCluster, list[int]],
    tls_server: tuple[RedisServer, int, Path],
    pinned_clock: None,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, tls_ports = tls_cluster
    now = [0.0]
    monkeypatch.setattr(iam.IAMSSLConnection, "clock", staticmethod(lambda: now[0]))
    nodes = [cluster.client(index) for index in range(len(cluster.servers))]
    token = iam.ElastiCacheIAMProvider(USER, CACHE, REGION, session=session).token()
    for node in nodes:  # ElastiCache keeps one user group for all shards; here: each node
        grant(node, token)

    def connections() -> set[tuple[int, int]]:
        return {(i, c) for i, node in enumerate(nodes) for c in user_connections(node)}

    url = (
        f"rediss://{USER}@127.0.0.1:{tls_ports[0]}/?iam=1&cache_name={CACHE}&region={REGION}"
        f"&ssl_ca_certs={tls_server[2]}"
    )
    registration = ddbcache_hooks.register(session, url, namespace=namespace)
    try:
        assert registration._transport.cluster
        client = session.client("dynamodb")
        make_table(client, "items")
        keys = [{"pk": {"S": f"k{i}"}} for i in range(12)]  # spread over the shards
        for key in keys:
            client.get_item(TableName="items", Key=key)
        assert all(
            client.get_item(TableName="items", Key=key)["CacheMetadata"]["CacheHit"] for key in keys
        )
        first = connections()
        assert {index for index, _ in first} == {0, 1, 2}

        for node in nodes:
            node.execute_command("CLIENT", "KILL", "USER", USER)
        assert all("CacheMetadata" in client.get_item(TableName="items", Key=k) for k in keys)
        second = connections()
        assert second and not second & first

        now[0] += iam.MAX_CONNECTION_AGE_S
        assert all("CacheMetadata" in client.get_item(TableName="items", Key=k) for k in keys)
        assert not connections() & second  # replaced at the age limit
    finally:
        registration.unregister()
        for node in nodes:
            node.execute_command("ACL", "DELUSER", USER)
            node.close()


ENV_APP = """
import boto3

client = boto3.Session(region_name="us-east-1").client("dynamodb")
for _ in range(2):
    response = client.get_item(TableName="items", Key={"pk": {"S": "a"}})
    print("HIT" if "CacheMetadata" in response else "MISS", response["Item"]["v"]["S"])
"""

# Pins botocore's signing clock in the child, as pinned_clock does here.
PIN_CLOCK = pin_source(PINNED)


def test_environment_activation_with_iam(
    tls_server: tuple[RedisServer, int, Path],
    admin: redis.Redis,
    pinned_clock: None,
    moto_url: str,
    tmp_path: Path,
) -> None:
    table = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(table, "items")
    table.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"S": "1"}})
    grant(admin, iam.ElastiCacheIAMProvider(USER, CACHE, REGION).token())
    (tmp_path / "sitecustomize.py").write_text(PIN_CLOCK)
    (tmp_path / "app.py").write_text(ENV_APP)
    _, port, cert = tls_server
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    environ.update(
        {
            "PYTHONPATH": str(tmp_path),
            "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
            "DDBCACHE_ENABLED": "1",
            "DDBCACHE_REDIS_URL": f"rediss://127.0.0.1:{port}/?ssl_ca_certs={cert}",
            "DDBCACHE_IAM_USER": USER,
            "DDBCACHE_IAM_CACHE_NAME": CACHE,
            "DDBCACHE_IAM_REGION": REGION,
            "DDBCACHE_NAMESPACE": "iam" + uuid.uuid4().hex[:8],
        }
    )
    result = subprocess.run(
        [sys.executable, str(tmp_path / "app.py")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MISS", "1", "HIT", "1"], result.stderr
    assert result.stderr == ""


def test_a_wrong_token_is_refused_at_registration(
    session: boto3.Session,
    tls_server: tuple[RedisServer, int, Path],
    admin: redis.Redis,
    pinned_clock: None,
    namespace: str,
) -> None:
    grant(admin, "not-the-token")
    with pytest.raises(ddbcache_hooks.CacheConnectionError):
        ddbcache_hooks.register(session, iam_url(tls_server), namespace=namespace)


def test_iam_over_a_plain_url_is_refused(
    session: boto3.Session, redis_server: RedisServer, namespace: str
) -> None:
    with pytest.raises(ConfigurationError, match="TLS only"):
        ddbcache_hooks.register(
            session, redis_server.url, namespace=namespace, iam_user=USER, iam_cache_name=CACHE
        )
    with pytest.raises(ConfigurationError, match="credential_provider="):
        ddbcache_hooks.register(
            session,
            redis.Redis(port=redis_server.port),
            namespace=namespace,
            iam_user=USER,
            iam_cache_name=CACHE,
        )


def test_doctor_reports_the_auth_mode(
    tls_server: tuple[RedisServer, int, Path],
    admin: redis.Redis,
    pinned_clock: None,
    moto_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    grant(admin, iam.ElastiCacheIAMProvider(USER, CACHE, REGION).token())

    def doctor(url: str) -> tuple[int, str]:
        out = io.StringIO()
        return cli.main(["doctor", "--redis-url", url], out=out), out.getvalue()

    code, out = doctor(iam_url(tls_server))
    assert code == 0, out
    assert f"ok    auth: IAM (user {USER}, replication group {CACHE}, {REGION})" in out
    assert "a token was generated" in out
    code, out = doctor(f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{tls_server[0].port}")
    assert code == 0 and "ok    auth: password (user default)" in out
    code, out = doctor(f"redis://{USER}@127.0.0.1:{tls_server[0].port}/?iam=1&cache_name=c")
    assert code == 1 and "FAIL  auth: IAM authentication works over TLS only" in out
