"""The cache owns its Redis connections: pool, time-outs, retries, fork.

Every test passes the client a user would naturally write (redis-py defaults:
a pool capped at 100 that fails past it, retries with back-off, a 5 s
time-out) or a URL; the cache's traffic must run with the cache's own policy.
The thread burst runs with the suite's loaded-machine time-out (conftest): what
it shows, that a busy pool is no outage, does not depend on its value; the task
burst runs with the production default.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import boto3
import pytest
import redis
import redis.asyncio as aredis
import redis.connection

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import NO_SETTLE, REGION, CallCounter, make_table, prove_read_access

KEY = {"pk": {"S": "hot"}}


def test_the_library_builds_its_own_pool_from_the_users_settings(
    redis_server: RedisServer, namespace: str, aws: None
) -> None:
    users = redis.Redis(host=redis_server.host, port=redis_server.port, db=3, client_name="app")
    registration = ddbcache_hooks.register(
        boto3.Session(region_name=REGION), users, namespace=namespace, redis_timeout_ms=40
    )
    try:
        own = registration._transport.client
        pool = own.connection_pool
        assert own is not users and pool is not users.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 256 and pool.timeout == 0.02
        kwargs = pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == (
            redis_server.host,
            redis_server.port,
            3,
        )
        assert kwargs["client_name"] == "app"
        assert kwargs["socket_timeout"] == 0.04 and kwargs["retry"].get_retries() == 0
        # The user's client is untouched: its own settings serve the application.
        assert users.connection_pool.connection_kwargs["socket_timeout"] == 5
    finally:
        registration.unregister()


def test_a_credential_provider_reaches_the_librarys_connections(
    redis_server: RedisServer, namespace: str, aws: None
) -> None:
    from redis.credentials import UsernamePasswordCredentialProvider

    from ddbcache_hooks.config import Settings
    from ddbcache_hooks.connections import connect_holder

    admin = redis.Redis(port=redis_server.port)
    admin.acl_setuser(
        "cache", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    try:
        provider = UsernamePasswordCredentialProvider("cache", "s3cret")
        holder = connect_holder(redis_server.url, Settings(), credential_provider=provider)
        assert holder.client.acl_whoami() in (b"cache", "cache")
        users = redis.Redis(port=redis_server.port, username="cache", password="s3cret")
        registration = ddbcache_hooks.register(
            boto3.Session(region_name=REGION), users, namespace=namespace
        )
        assert registration._transport.client.acl_whoami() in (b"cache", "cache")
        registration.unregister()
    finally:
        admin.acl_deluser("cache")


def test_200_threads_missing_one_item_through_a_default_client_cost_one_read(
    redis_server: RedisServer, namespace: str, moto_url: str
) -> None:
    session = boto3.Session(region_name=REGION)
    # A default redis.Redis: a pool capped at 100 that raises past it. No settle
    # window: the fill right after the put would live at most a second, and 200
    # threads may take longer than that to start on a loaded machine.
    registration = ddbcache_hooks.register(
        session,
        redis.Redis(port=redis_server.port),
        namespace=namespace,
        lease_wait_ms=20_000,
        **NO_SETTLE,
    )
    try:
        c = session.client("dynamodb", endpoint_url=moto_url)
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        prove_read_access(c)  # the pool is under test here, not the access check's first read
        calls = CallCounter().attach(c)
        barrier = threading.Barrier(200)
        results: list[Any] = []

        def read() -> None:
            barrier.wait()
            results.append(c.get_item(TableName="items", Key=KEY))

        threads = [threading.Thread(target=read) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 200 and all(r["Item"] == KEY for r in results)
        stats = registration.stats()
        assert calls["GetItem"] == 1
        assert stats["breaker_opened"] == 0 and stats["errors"] == 0
        assert registration._protocol.breaker.state == "closed"
    finally:
        registration.unregister()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_200_tasks_missing_one_item_through_a_default_async_client_cost_one_read(
    redis_server: RedisServer, namespace: str, moto_url: str
) -> None:
    import aioboto3

    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item=KEY)

    async def main() -> None:
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(
            session,
            aredis.Redis(port=redis_server.port),
            namespace=namespace,
            lease_wait_ms=20_000,
            redis_timeout_ms=50,
            **NO_SETTLE,  # as in the sync test above
        )
        try:
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                calls = CallCounter().attach(c)
                results = await asyncio.gather(
                    *(c.get_item(TableName="items", Key=KEY) for _ in range(200))
                )
            assert all(r["Item"] == KEY for r in results)
            assert calls["GetItem"] == 1
            stats = registration.stats()
            assert stats["breaker_opened"] == 0 and stats["errors"] == 0
        finally:
            registration.unregister()

    asyncio.run(main())


def test_an_exhausted_pool_bypasses_without_moving_the_breaker(
    redis_server: RedisServer, namespace: str, aws: None
) -> None:
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session,
        redis_server.url,
        namespace=namespace,
        redis_max_connections=1,
        redis_pool_wait_ms=0,
        breaker_threshold=1,
    )
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        pool = registration._transport.client.connection_pool
        held = pool.get_connection()  # the only connection is busy elsewhere
        try:
            for _ in range(3):
                assert c.get_item(TableName="items", Key=KEY)["Item"] == KEY
        finally:
            pool.release(held)
        stats = registration.stats()
        assert stats["pool_busy"] == 3 and stats["errors"] == 0 and stats["breaker_opened"] == 0
        c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
    finally:
        registration.unregister()


class _Attempts(redis.connection.Connection):
    """Counts the callers' connection attempts (a default client retries with back-off).

    The background worker's attempts to replay held invalidations are not the
    callers' cost: they run in a thread of their own, at most one a second.
    """

    attempts = 0

    def _connect(self) -> Any:
        if threading.current_thread() is threading.main_thread():
            type(self).attempts += 1
        return super()._connect()


def test_a_dead_server_costs_one_attempt_per_call_until_the_breaker_opens(
    namespace: str, aws: None
) -> None:
    """40 calls with the server killed: one connection attempt per failing call (no
    retries with back-off, which cost the default client 21.9 s for 20 calls), and
    none at all while the breaker is open. Counted, not timed."""
    session = boto3.Session(region_name=REGION)
    with RedisServer() as server:
        users = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=_Attempts, port=server.port)
        )
        registration = ddbcache_hooks.register(
            session, users, namespace=namespace, breaker_threshold=5, breaker_cooldown_ms=60_000
        )
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        server.kill()
        _Attempts.attempts = 0
        for n in range(40):
            if n % 2:
                c.put_item(TableName="items", Item={**KEY, "v": {"N": str(n)}})
            else:
                assert c.get_item(TableName="items", Key=KEY)["Item"]["pk"] == KEY["pk"]
        stats = registration.stats()
        assert stats["breaker_opened"] == 1
        assert stats["errors"] == 5
        assert _Attempts.attempts == 5  # one per failed call: no retries
        registration.unregister()


def _fork_children(
    client: Any, session: boto3.Session, rounds: int, per_round: int, table: str
) -> list[str]:
    """Fork while threads run; every child must use the cache and exit. Problems found."""
    problems: list[str] = []
    for _ in range(rounds):
        pids = []
        for _ in range(per_round):
            pid = os.fork()
            if pid == 0:  # the child: the inherited client, then a new one
                code = 1
                try:
                    client.get_item(TableName=table, Key=KEY)
                    fresh = session.client("dynamodb")  # made in the child: attached there
                    fresh.get_item(TableName=table, Key=KEY)
                    threads = {t.name for t in threading.enumerate()}
                    # The parent's threads do not exist here: the child started its own.
                    code = 0 if {"ddbcache-near", "ddbcache-metrics"} <= threads else 3
                finally:
                    os._exit(code)
            pids.append(pid)
        deadline = time.monotonic() + 30  # generous: a hang fails here instead of CI
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    pids.remove(pid)
                    if os.waitstatus_to_exitcode(status) != 0:
                        problems.append(f"child {pid} exited with {status}")
            time.sleep(0.01)
        for pid in pids:
            problems.append(f"child {pid} hung")
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return problems


def test_forked_children_with_64_threads_running_all_finish(
    redis_server: RedisServer, namespace: str, moto_url: str
) -> None:
    from ddbcache_hooks import NearCache

    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(
        session,
        redis.Redis(port=redis_server.port),
        namespace=namespace,
        near_cache=NearCache(ttl_ms=50),
        metrics_flush_s=1,
    )
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = moto_url  # children make new clients
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                c.get_item(TableName="items", Key=KEY)
                if threading.get_ident() % 7 == 0:
                    c.put_item(TableName="items", Item=KEY)

        threads = [threading.Thread(target=busy, daemon=True) for _ in range(64)]
        for t in threads:
            t.start()
        try:
            problems = _fork_children(c, session, rounds=4, per_round=6, table="items")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert problems == []
        assert registration.stats()["errors"] == 0  # the parent's connections are intact
    finally:
        del os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
        registration.unregister()


def test_cluster_clients_get_a_blocking_pool_per_node(
    redis_cluster: Any, namespace: str, aws: None
) -> None:
    import redis.cluster

    host, port = redis_cluster.startup_nodes[0]
    users = redis.cluster.RedisCluster(host=host, port=port)
    session = boto3.Session(region_name=REGION)
    registration = ddbcache_hooks.register(session, users, namespace=namespace)
    try:
        c = session.client("dynamodb")
        make_table(c, "items")
        c.put_item(TableName="items", Item=KEY)
        c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
        own = registration._transport.client
        assert own is not users
        node = own.get_node_from_key("x")
        pool = node.redis_connection.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool) and pool.timeout == 0.02
        assert pool.connection_kwargs["socket_timeout"] == 1.0  # the suite's loaded-machine value
    finally:
        registration.unregister()


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_async_cluster_clients_are_rebuilt_with_the_policy(
    redis_cluster: Any, namespace: str, moto_url: str
) -> None:
    import aioboto3
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    host, port = redis_cluster.startup_nodes[0]
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item=KEY)

    async def main() -> None:
        users = AsyncRedisCluster(host=host, port=port)
        session = aioboto3.Session(region_name=REGION)
        registration = await ddbcache_hooks.register_async(session, users, namespace=namespace)
        try:
            own = registration._transport.client
            assert own is not users and own.connection_kwargs["socket_timeout"] == 1.0
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                await c.get_item(TableName="items", Key=KEY)
                assert "CacheMetadata" in await c.get_item(TableName="items", Key=KEY)
        finally:
            registration.unregister()
            await users.aclose()

    asyncio.run(main())


def _self_signed(directory: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_tls_settings_of_the_users_client_are_kept(
    tmp_path: Any, namespace: str, moto_url: str
) -> None:
    import aioboto3

    from ddbcache_hooks._redis_server import free_port

    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key]
    tls += ["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, "items")
    admin.put_item(TableName="items", Item=KEY)
    with RedisServer(extra_args=tls):
        session = boto3.Session(region_name=REGION)
        users = redis.Redis(host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=cert)
        registration = ddbcache_hooks.register(session, users, namespace=namespace)
        pool = registration._transport.client.connection_pool
        assert issubclass(pool.connection_class, redis.SSLConnection)
        c = session.client("dynamodb", endpoint_url=moto_url)
        c.get_item(TableName="items", Key=KEY)
        assert "CacheMetadata" in c.get_item(TableName="items", Key=KEY)
        registration.unregister()

        async def main() -> None:
            session = aioboto3.Session(region_name=REGION)
            users = aredis.Redis(host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=cert)
            registration = await ddbcache_hooks.register_async(session, users, namespace=namespace)
            async with session.client("dynamodb", endpoint_url=moto_url) as c:
                assert "CacheMetadata" in await c.get_item(TableName="items", Key=KEY)
            registration.unregister()
            await users.aclose()

        asyncio.run(main())


def _clients(port: int) -> int:
    """Connections the server has open, this probe's own excluded."""
    with redis.Redis(port=port) as admin:
        return len(admin.client_list()) - 1


def _settled_clients(port: int, want: int) -> int:
    """The count once the server has seen the last closes (it reaps them as it reads)."""
    deadline = time.monotonic() + 0.5
    while _clients(port) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return _clients(port)


def test_unregister_closes_every_connection_at_once(namespace: str, aws: None) -> None:
    with RedisServer() as server:
        before = _clients(server.port)
        for i in range(20):
            session = boto3.Session(region_name=REGION)
            registration = ddbcache_hooks.register(
                session, server.url, namespace=namespace, metrics_flush_s=1
            )
            c = session.client("dynamodb")
            if i == 0:
                make_table(c, "items")
            c.put_item(TableName="items", Item=KEY)
            c.get_item(TableName="items", Key=KEY)
            assert _clients(server.port) > before  # it did open some
            registration.unregister()
        after = _settled_clients(server.port, before)
        print(f"CLIENT LIST: {before} connections before 20 registrations, {after} after")
        assert after == before


@pytest.mark.aio  # needs aiobotocore / aioboto3: the async extra's session
def test_aclose_closes_every_connection_at_once(namespace: str, moto_url: str) -> None:
    import aioboto3

    with RedisServer() as server:
        admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
        make_table(admin, "items")
        admin.put_item(TableName="items", Item=KEY)
        before = _clients(server.port)

        async def main() -> None:
            for _ in range(10):
                session = aioboto3.Session(region_name=REGION)
                registration = await ddbcache_hooks.register_async(
                    session, server.url, namespace=namespace
                )
                async with session.client("dynamodb", endpoint_url=moto_url) as c:
                    await c.get_item(TableName="items", Key=KEY)
                assert _clients(server.port) > before
                await registration.aclose()

        asyncio.run(main())
        after = _settled_clients(server.port, before)
        print(f"CLIENT LIST: {before} connections before 10 async registrations, {after} after")
        assert after == before
