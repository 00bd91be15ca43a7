"""The cache never serves a caller what DynamoDB would deny it (moto server enforcing IAM).

A moto server of its own, started with ``INITIAL_NO_AUTH_ACTION_COUNT=3``: the
first three requests create an administrator (user, policy, access key), and
every request after them is authenticated and authorized against moto's IAM.
``alice`` may do anything in DynamoDB; ``bob`` is denied every read of it.
Each has a boto3 session of their own, registered on the same Redis and namespace.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError

import ddbcache_hooks
from ddbcache_hooks._redis_server import free_port
from tests.conftest import REGION, make_table
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
READS = ("GetItem", "BatchGetItem", "Query", "Scan")
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
BOB = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"},
        {
            "Effect": "Deny",
            "Action": [f"dynamodb:{op}" for op in READS],
            "Resource": "*",
        },
    ],
}


@pytest.fixture(scope="module")
def iam_moto() -> Iterator[dict[str, Any]]:
    """A moto server enforcing IAM, with the table, alice's and bob's keys."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/").close()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        root = boto3.Session(
            aws_access_key_id="root", aws_secret_access_key="root", region_name=REGION
        ).client("iam", endpoint_url=url)
        root.create_user(UserName="admin")  # the three unauthenticated requests
        root.put_user_policy(
            UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL)
        )
        admin_key = root.create_access_key(UserName="admin")["AccessKey"]
        admin = _session(admin_key)
        iam = admin.client("iam", endpoint_url=url)
        keys = {}
        for user, policy in (("alice", ALLOW_ALL), ("bob", BOB), ("carol", ALLOW_ALL)):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
            ],
        }
        role = iam.create_role(RoleName="App", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName="App", PolicyName="p", PolicyDocument=json.dumps(ALLOW_ALL))
        keys["role"] = role["Role"]["Arn"]
        keys["admin"] = admin_key
        dynamodb = admin.client("dynamodb", endpoint_url=url)
        make_table(dynamodb, "secrets", ("pk", "S"), ("sk", "S"))
        for sk in ("1", "2"):
            dynamodb.put_item(
                TableName="secrets", Item={"pk": {"S": "a"}, "sk": {"S": sk}, "v": {"S": "x"}}
            )
        with pytest.raises(ClientError):  # enforcement is on
            _session(keys["bob"]).client("dynamodb", endpoint_url=url).get_item(
                TableName="secrets", Key={"pk": {"S": "a"}, "sk": {"S": "1"}}
            )
        yield {"url": url, **keys}
    finally:
        server.terminate()
        server.wait(10)


def _session(key: dict[str, Any]) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name=REGION,
    )


def reads(client: Any) -> dict[str, Callable[[], dict[str, Any]]]:
    key = {"pk": {"S": "a"}, "sk": {"S": "1"}}
    return {
        "GetItem": lambda: client.get_item(TableName="secrets", Key=key),
        "BatchGetItem": lambda: client.batch_get_item(
            RequestItems={"secrets": {"Keys": [key, {"pk": {"S": "a"}, "sk": {"S": "2"}}]}}
        ),
        "Query": lambda: client.query(
            TableName="secrets",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "a"}},
        ),
        "Scan": lambda: client.scan(TableName="secrets"),
    }


def outcome(read: Callable[[], dict[str, Any]]) -> str:
    """'hit', 'miss', 'denied' (DynamoDB refused the caller) or DynamoDB's error code."""
    try:
        response = read()
    except ClientError as exc:
        code = str(exc.response["Error"]["Code"])
        # moto answers AccessDenied with HTTP 403 and an XML body botocore reads as "403"
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        return "denied" if code.startswith("AccessDenied") or status == 403 else code
    meta = response.get("CacheMetadata") or {}
    return "hit" if meta.get("CacheHit") or meta.get("CacheHitCount") else "miss"


@pytest.fixture
def users(
    iam_moto: dict[str, Any], redis_server: RedisServer, namespace: str
) -> Iterator[Callable[..., tuple[Any, Any, Any, Any]]]:
    """alice's and bob's clients, each session registered on the same Redis and namespace."""
    registrations: list[ddbcache_hooks.Registration] = []

    def make(*names: str, **options: Any) -> tuple[Any, Any, Any, Any]:
        made = []
        for user in names or ("alice", "bob"):
            session = _session(iam_moto[user])
            registration = ddbcache_hooks.register(
                session,
                redis.Redis(port=redis_server.port),
                namespace=namespace,
                scan_admission=1,
                **options,
            )
            registrations.append(registration)
            made += [session.client("dynamodb", endpoint_url=iam_moto["url"]), registration]
        return made[0], made[1], made[2], made[3]

    yield make
    for registration in registrations:
        registration.unregister()


def test_bob_never_reads_what_alice_cached(users: Callable[..., Any]) -> None:
    alice, alice_cache, bob, bob_cache = users()
    alice_reads, bob_reads = reads(alice), reads(bob)
    first = {op: outcome(read) for op, read in alice_reads.items()}
    assert first["GetItem"] == "miss"  # her first read of the table goes to DynamoDB (fills)
    for _ in range(3):
        assert {op: outcome(read) for op, read in alice_reads.items()} == dict.fromkeys(
            READS, "hit"
        )
    for _ in range(2):
        assert {op: outcome(read) for op, read in bob_reads.items()} == dict.fromkeys(
            READS, "denied"
        )
    stats = alice_cache.stats()
    hits = sum(stats[f"{kind}_hits"] for kind in ("item", "query", "scan"))
    misses = sum(stats[f"{kind}_misses"] for kind in ("item", "query", "scan"))
    # alice's 16 reads look up 20 entries, 4 distinct (the batch shares key 1 with
    # GetItem): 4 misses, as without the check. It cost her no hit: her one probe (the
    # first GetItem of the table) was a miss anyway, and it filled.
    assert (hits, misses) == (16, 4), stats
    assert alice_cache.stats()["access_checks"] == 1
    assert bob_cache.stats()["access_denied"] >= 4


def test_without_the_check_bob_is_served(users: Callable[..., Any]) -> None:
    """The hole the check closes (access_recheck_s=0: every caller trusted, as DAX does)."""
    alice, _, bob, _ = users(access_recheck_s=0)
    for read in reads(alice).values():
        outcome(read)
    assert outcome(reads(bob)["GetItem"]) == "hit"


BOB_ELSEWHERE = textwrap.dedent(
    """
    import json, sys, boto3, redis, ddbcache_hooks
    from botocore.exceptions import ClientError
    from tests.integration.test_access import outcome, reads
    url, key_id, secret, port, namespace = sys.argv[1:]
    session = boto3.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1")
    ddbcache_hooks.register(session, redis.Redis(port=int(port)), namespace=namespace)
    bob = reads(session.client("dynamodb", endpoint_url=url))
    print(json.dumps([{op: outcome(read) for op, read in bob.items()} for _ in range(2)]))
    """
)


def test_bob_in_another_process_is_refused_too(
    users: Callable[..., Any], iam_moto: dict[str, Any], redis_server: RedisServer, namespace: str
) -> None:
    alice, _, _, _ = users()
    for _ in range(2):
        for read in reads(alice).values():
            outcome(read)
    assert outcome(reads(alice)["GetItem"]) == "hit"
    for round_ in _run(BOB_ELSEWHERE, iam_moto, "bob", redis_server, namespace):
        assert round_ == dict.fromkeys(READS, "denied"), round_


# --- isolation="principal": entries scoped to the caller's principal -------------------


def test_two_principals_never_share_an_entry(users: Callable[..., Any]) -> None:
    """alice and carol may both read the table, but in a policy moto cannot evaluate
    (LeadingKeys) they would see different items: neither is served the other's entry."""
    alice, alice_cache, carol, carol_cache = users("alice", "carol", isolation="principal")
    for _ in range(2):
        assert {op: outcome(read) for op, read in reads(alice).items()}["GetItem"]
    assert outcome(reads(carol)["GetItem"]) == "miss"  # alice's entry is not hers
    assert outcome(reads(carol)["GetItem"]) == "hit"  # her own is
    for read in reads(carol).values():
        outcome(read)

    def counts(registration: ddbcache_hooks.Registration) -> tuple[int, int]:
        stats = registration.stats()
        return stats["misses"], stats["fills"]

    # Each missed and filled the 4 entries herself (GetItem's key 1 serves her batch
    # too): had carol been served alice's entries, she would have missed none.
    assert counts(alice_cache) == counts(carol_cache) == (4, 4)


ALICE_ELSEWHERE = textwrap.dedent(
    """
    import json, sys, boto3, redis, ddbcache_hooks
    from tests.integration.test_access import outcome, reads
    url, key_id, secret, port, namespace = sys.argv[1:]
    session = boto3.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1")
    ddbcache_hooks.register(
        session, redis.Redis(port=int(port)), namespace=namespace, isolation="principal")
    alice = reads(session.client("dynamodb", endpoint_url=url))
    print(json.dumps([{op: outcome(read) for op, read in alice.items()} for _ in range(2)]))
    """
)


def test_one_principal_shares_entries_across_processes(
    users: Callable[..., Any], iam_moto: dict[str, Any], redis_server: RedisServer, namespace: str
) -> None:
    alice, _, _, _ = users("alice", "carol", isolation="principal")
    for _ in range(2):
        for read in reads(alice).values():
            outcome(read)
    rounds = _run(ALICE_ELSEWHERE, iam_moto, "alice", redis_server, namespace)
    # Its first read of the table goes to DynamoDB (the access check), the rest hit.
    assert rounds[0] == {"GetItem": "miss", "BatchGetItem": "hit", "Query": "hit", "Scan": "hit"}
    assert rounds[1] == dict.fromkeys(READS, "hit")


def _run(
    script: str,
    iam_moto: dict[str, Any],
    user: str,
    redis_server: RedisServer,
    namespace: str,
) -> list[dict[str, str]]:
    key = iam_moto[user]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            iam_moto["url"],
            key["AccessKeyId"],
            key["SecretAccessKey"],
            str(redis_server.port),
            namespace,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rounds: list[dict[str, str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rounds


def test_an_instance_role_is_resolved_through_sts(
    users: Callable[..., Any], iam_moto: dict[str, Any]
) -> None:
    """Credentials STS must name (an instance role's): GetCallerIdentity, once per set;
    the role session's credentials after a refresh are the same principal."""
    from botocore.credentials import Credentials

    alice, alice_cache, _, _ = users("alice", "carol", isolation="principal")
    sts = _session(iam_moto["admin"]).client("sts", endpoint_url=iam_moto["url"])

    def instance_role() -> Credentials:
        issued = sts.assume_role(RoleArn=iam_moto["role"], RoleSessionName="i-0abc")
        c = issued["Credentials"]
        return Credentials(
            c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], method="iam-role"
        )

    alice._request_signer._credentials = instance_role()
    read = reads(alice)["GetItem"]
    assert outcome(read) == "miss"
    assert outcome(read) == "hit"
    alice._request_signer._credentials = instance_role()  # refreshed: new keys, same session
    assert outcome(read) == "miss"  # new credentials prove their access first...
    assert outcome(read) == "hit"
    stats = alice_cache.stats()
    assert stats["fills"] == 1 and stats["bypasses"] == 0  # ...and share the entry


def test_an_unknown_principal_bypasses_the_cache(
    users: Callable[..., Any], iam_moto: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """STS refuses the credentials (or cannot be reached): no guess, one warning."""
    from botocore.credentials import Credentials

    alice, alice_cache, _, _ = users("alice", "carol", isolation="principal")
    key = iam_moto["alice"]
    alice._request_signer._credentials = Credentials(
        key["AccessKeyId"], key["SecretAccessKey"], "not-a-token", method="iam-role"
    )
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        for _ in range(3):
            outcome(reads(alice)["GetItem"])
    assert alice_cache.stats()["bypasses"] == 3 and alice_cache.stats()["fills"] == 0
    assert len([r for r in caplog.records if "principal is unknown" in r.getMessage()]) == 1


# --- detection: principals sharing a namespace ------------------------------------------


def _census(redis_server: RedisServer, namespace: str, count: int) -> dict[bytes, bytes]:
    key = f"{namespace}:principals"
    deadline = time.monotonic() + 10  # recorded by a daemon thread
    fields: dict[bytes, bytes] = {}
    while time.monotonic() < deadline:
        fields = redis.Redis(port=redis_server.port).hgetall(key)
        if len(fields) >= count:
            break
        time.sleep(0.02)
    return fields


def test_principals_sharing_a_namespace_are_reported(
    users: Callable[..., Any],
    iam_moto: dict[str, Any],
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ddbcache_hooks import census, cli

    monkeypatch.setattr(census, "DELAY_S", 0.0)
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        alice, _, carol, _ = users("alice", "carol")
        outcome(reads(alice)["GetItem"])
        assert len(_census(redis_server, namespace, 1)) == 1
        monkeypatch.setenv("DDBCACHE_NAMESPACE", namespace)
        out = io.StringIO()
        cli.main(["doctor", "--redis-url", redis_server.url], out=out)
        assert "ok    principals: 1 IAM principal(s)" in out.getvalue()
        outcome(reads(carol)["GetItem"])
        outcome(reads(carol)["Query"])  # a principal is recorded once per process
        fields = _census(redis_server, namespace, 2)
        deadline = time.monotonic() + 5
        while not _shared_warnings(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(fields) == 2
    for digest in fields:  # digests, never the identities
        for user in ("alice", "carol"):
            assert iam_moto[user]["AccessKeyId"].encode() not in digest
            assert user.encode() not in digest
    assert len(_shared_warnings(caplog)) == 1
    assert "isolation='principal'" in _shared_warnings(caplog)[0]
    for command in ("doctor", "stats"):
        out = io.StringIO()
        cli.main([command, "--redis-url", redis_server.url], out=out)
        assert "WARN  principals: 2 IAM principals read namespace" in out.getvalue(), command
        assert "isolation='principal'" in out.getvalue()


def _shared_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if "IAM principals read namespace" in r.getMessage()
    ]
