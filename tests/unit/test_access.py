"""The read-access gate (access.py) and principal resolution (principals.py), without I/O."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    Credentials,
    DeferredRefreshableCredentials,
    RefreshableCredentials,
)

from ddbcache_hooks import access, principals
from ddbcache_hooks.keys import TableRef
from ddbcache_hooks.principals import Principals, Unresolved, local_principal

TABLE = TableRef("aws", "us-east-1", "", "t")
OTHER = TableRef("aws", "us-east-1", "", "u")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_grant_is_proved_for_a_bounded_time() -> None:
    clock = Clock()
    gate = access.AccessGate(clock)
    grants = ((TABLE, None),)
    assert gate.unproven("alice", grants) == grants
    gate.prove("alice", grants, 300)
    assert gate.unproven("alice", grants) == ()
    assert gate.unproven("bob", grants) == grants  # per identity
    assert gate.unproven("alice", ((TABLE, "by-owner"),)) == ((TABLE, "by-owner"),)  # per index
    clock.now += 300
    assert gate.unproven("alice", grants) == grants  # the proof ran out: DynamoDB again


def test_a_denial_stands_for_its_interval_even_after_a_success() -> None:
    clock = Clock()
    gate = access.AccessGate(clock)
    grants = ((TABLE, None),)
    gate.prove("bob", grants, 300)
    gate.deny("bob", grants, 300)
    assert gate.unproven("bob", grants) == grants
    gate.prove("bob", grants, 300)  # another read succeeded (a LeadingKeys condition, say)
    assert gate.unproven("bob", grants) == grants
    clock.now += 301
    gate.prove("bob", grants, 300)
    assert gate.unproven("bob", grants) == ()


def test_only_the_unproved_tables_of_a_batch_are_named() -> None:
    gate = access.AccessGate(Clock())
    gate.prove("alice", ((TABLE, None),), 300)
    assert gate.unproven("alice", ((TABLE, None), (OTHER, None))) == ((OTHER, None),)


def test_the_gate_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "MAX_GRANTS", 10)
    gate = access.AccessGate(Clock())
    for i in range(50):
        gate.prove(f"id{i}", ((TABLE, None),), 300)
    assert len(gate._seen) <= 10


@pytest.mark.parametrize(
    ("status", "code", "denied"),
    [
        (400, "AccessDeniedException", True),
        (400, "UnrecognizedClientException", True),
        (400, "ExpiredTokenException", True),
        (400, "NotAuthorizedException", True),
        (403, "403", True),
        (400, "ValidationException", False),
        (400, "ProvisionedThroughputExceededException", False),
        (500, "InternalServerError", False),
    ],
)
def test_authorization_errors_are_denials(status: int, code: str, denied: bool) -> None:
    assert access.is_denial(status, {"Error": {"Code": code}}) is denied


def test_the_identity_is_read_without_refreshing() -> None:
    def refresh() -> dict[str, Any]:
        raise AssertionError("the hit path must not refresh credentials")

    expiry = (
        datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    ).isoformat()
    expired = RefreshableCredentials("ASIAOLD", "s", "t", expiry, refresh, "iam-role")
    assert access.access_key_of(expired) == "ASIAOLD"
    deferred = DeferredRefreshableCredentials(refresh, "sso")
    assert access.access_key_of(deferred) is None  # not loaded: the call loads it
    assert access.access_key_of(None) == access.ANONYMOUS
    signer = type("Signer", (), {"_credentials": Credentials("AKIA1", "s")})()
    assert access.credential_identity(signer) == access.identity_digest("AKIA1")
    assert "AKIA1" not in access.identity_digest("AKIA1")


def _assumed(extra: dict[str, Any]) -> RefreshableCredentials:
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=None,
        source_credentials=None,
        role_arn="arn:aws:iam::123456789012:role/teams/Reader",
        extra_args=extra,
    )
    expiry = (
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    ).isoformat()
    return RefreshableCredentials(
        "ASIAROLE", "s", "t", expiry, fetcher.fetch_credentials, "assume-role"
    )


def test_principals_the_credentials_tell() -> None:
    assert local_principal(Credentials("AKIAUSER", "s")) == "key:AKIAUSER"  # an IAM user's key
    assert (
        local_principal(_assumed({"RoleSessionName": "billing"}))
        == "arn:aws:sts::123456789012:assumed-role/Reader/billing"
    )
    # A session policy or session tags: the session ARN does not say the permissions.
    assert local_principal(_assumed({"RoleSessionName": "b", "Policy": "{}"})) == "session:ASIAROLE"
    # Explicit or environment temporary credentials (Cognito identity pools among them):
    # the credential set itself, never a role ARN its users share.
    assert local_principal(Credentials("ASIA1", "s", "t", method="explicit")) == "session:ASIA1"
    assert local_principal(Credentials("ASIA2", "s", "t", method="env")) == "session:ASIA2"
    for method in ("iam-role", "container-role", "sso"):
        assert local_principal(Credentials("ASIA3", "s", "t", method=method)) is None
    with pytest.raises(Unresolved):
        local_principal(DeferredRefreshableCredentials(lambda: {}, "sso"))


def test_sts_is_asked_once_per_credential_set() -> None:
    asked: list[str] = []

    def ask(credentials: Any, region: Any, endpoint: Any) -> str:
        asked.append(credentials.access_key)
        return "arn:aws:sts::123456789012:assumed-role/App/i-0abc"

    resolver = Principals(ask)
    one = Credentials("ASIA1", "s", "t", method="iam-role")
    first = resolver.scope(one, "us-east-1", None)
    assert first and resolver.scope(one, "us-east-1", None) == first
    # Refreshed credentials of the same instance role: the same principal, asked again once.
    again = resolver.scope(Credentials("ASIA2", "s", "t", method="iam-role"), "us-east-1", None)
    assert again == first and asked == ["ASIA1", "ASIA2"]
    other = resolver.scope(Credentials("AKIAX", "s"), "us-east-1", None)
    assert other not in (None, first)


def test_an_unresolved_principal_bypasses_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    resolver = Principals(principals.caller_arn, clock)
    role = Credentials("ASIA1", "s", "t", method="iam-role")
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        # Nothing listens there: STS is unreachable.
        assert resolver.scope(role, "us-east-1", "http://127.0.0.1:9") is None
        assert resolver.scope(role, "us-east-1", "http://127.0.0.1:9") is None
    warnings = [r for r in caplog.records if "principal is unknown" in r.getMessage()]
    assert len(warnings) == 1 and "GetCallerIdentity" in warnings[0].getMessage()
    clock.now += principals.RETRY_S
    with caplog.at_level(logging.WARNING, logger="ddbcache_hooks"):
        assert resolver.scope(role, "us-east-1", "http://127.0.0.1:9") is None  # asked again
    assert len([r for r in caplog.records if "principal is unknown" in r.getMessage()]) == 1


def test_one_proving_read_in_flight_per_identity_and_grant() -> None:
    clock = Clock()
    gate = access.AccessGate(clock)
    grants = ((TABLE, None),)
    assert gate.lead("alice", grants, 2.0)
    assert not gate.lead("alice", grants, 2.0)  # the others wait for it
    assert gate.in_flight("alice", grants) and not gate.in_flight("bob", grants)
    assert gate.lead("bob", grants, 2.0)
    gate.landed("alice", grants)
    assert not gate.in_flight("alice", grants)
    assert gate.lead("alice", grants, 2.0)
    clock.now += 2.0  # a proving read that never reported back stops being waited for
    assert not gate.in_flight("alice", grants) and gate.lead("alice", grants, 2.0)
