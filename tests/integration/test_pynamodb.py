"""PynamoDB models with the cache on, both ways: register() on the botocore session or client
behind PynamoDB's connection, and environment activation in a separate process. Hits,
invalidation and read-your-writes are the same as through boto3 (pynamodb_app.expected)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

import ddbcache_hooks
from ddbcache_hooks._redis_server import RedisServer
from tests.conftest import REGION, make_table
from tests.integration import pynamodb_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("attach_to", ["session", "client"])
def test_models_cached_by_register(
    session: boto3.Session, redis_server: RedisServer, namespace: str, attach_to: str
) -> None:
    table = "things-" + attach_to
    make_table(session.client("dynamodb"), table, ("pk", "S"), ("sk", "N"))
    thing = pynamodb_app.model_for(table)
    connection = pynamodb_app.connection_of(thing)
    # PynamoDB makes its own botocore session; its clients are made from it on first use.
    target = connection.session if attach_to == "session" else connection.client
    registration = ddbcache_hooks.register(
        target, redis_server.url, namespace=namespace, query_invalidation="write"
    )
    try:
        assert pynamodb_app.scenario(thing) == pynamodb_app.expected()
        stats = registration.stats()
        assert stats["errors"] == 0 and stats["hits"] > 0
    finally:
        registration.unregister()


def test_uncached_models_for_comparison(session: boto3.Session) -> None:
    """The same steps without the cache: every read goes out (so the counts above are hits)."""
    make_table(session.client("dynamodb"), "plain", ("pk", "S"), ("sk", "N"))
    steps = pynamodb_app.scenario(pynamodb_app.model_for("plain"))
    expected = pynamodb_app.expected()
    assert [value for *_, value in steps] == [value for *_, value in expected]
    assert steps[0][1] == {"PutItem": 2}
    assert steps[2][1] == {"GetItem": 1} and steps[-1][1] == {"GetItem": 1}


def test_models_cached_by_environment_activation(moto_url: str, redis_server: RedisServer) -> None:
    table = "things-env"
    admin = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=moto_url)
    make_table(admin, table, ("pk", "S"), ("sk", "N"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    environ.update(
        {
            "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
            "PYTHONPATH": str(ROOT),
            "DDBCACHE_ENABLED": "1",
            "DDBCACHE_REDIS_URL": redis_server.url,
            "DDBCACHE_NAMESPACE": "pynamo" + uuid.uuid4().hex[:8],
            "DDBCACHE_QUERY_INVALIDATION": "write",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.pynamodb_app", table],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    steps: list[list[Any]] = json.loads(result.stdout)
    assert steps == pynamodb_app.expected()
