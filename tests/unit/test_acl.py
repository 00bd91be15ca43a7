"""The ACL the library needs: derived from the scripts and the code, and the docs that show it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.exceptions import NoPermissionError, ResponseError

from ddbcache_hooks import acl
from ddbcache_hooks.effects import Script
from ddbcache_hooks.scripts import FILL_IF_LEASED, SCRIPTS
from ddbcache_hooks.streams.state import SCRIPTS as STREAM_SCRIPTS

ROOT = Path(__file__).parents[2]


def test_every_command_of_every_script_is_in_the_list() -> None:
    sources = "\n".join(s.source for s in (*SCRIPTS, *STREAM_SCRIPTS))
    called = {m.lower() for m in re.findall(r"redis\.p?call\('([A-Z]+)'", sources)}
    assert called and called <= set(acl.commands())
    assert {"hmget", "hset", "hdel", "del", "pexpire", "pttl", "exists", "type"} <= called


def test_a_script_whose_command_is_not_a_literal_is_refused() -> None:
    script = Script("computed", "local c = ARGV[1]\nreturn redis.call(c, KEYS[1])", "0" * 40)
    with pytest.raises(ValueError, match="computed: command name is not a literal"):
        acl.script_commands([script])


def test_every_plain_command_the_package_sends_is_in_the_list() -> None:
    """Commands written as Call(None, ("NAME", ...)), and client methods: each method called
    on a client or pipeline must be classified below, so a new one fails until it is."""
    sent: set[str] = {"evalsha", "script|load"}  # store._queue, the transports
    methods: set[str] = set()
    for path in (ROOT / "ddbcache_hooks").rglob("*.py"):
        text = path.read_text()
        sent |= {m.lower() for m in re.findall(r'Call\(None, \("([A-Z]+)"', text)}
        methods |= set(re.findall(_METHOD, text))
    unknown = methods - set(_SENDS) - _NOT_COMMANDS
    assert not unknown, f"classify these client methods in test_acl.py: {sorted(unknown)}"
    sent |= {_SENDS[m] for m in methods if m in _SENDS}
    assert sent - set(acl.commands()) == set()
    assert {"hmget", "publish", "subscribe", "scan", "time"} <= sent


_METHOD = r"(?:client|pipe|transport\.client|self\._client)\.(\w+)\("
#: Client methods and the command each sends.
_SENDS = {
    "expire": "expire",
    "get": "get",
    "hdel": "hdel",
    "hgetall": "hgetall",
    "hmget": "hmget",
    "hset": "hset",
    "hstrlen": "hstrlen",
    "info": "info",
    "pexpire": "pexpire",
    "ping": "ping",
    "pttl": "pttl",
    "publish": "publish",
    "pubsub": "subscribe",
    "register_script": "evalsha",
    "scan_iter": "scan",
    "script_load": "script|load",
    "set": "set",
    "time": "time",
    "unlink": "unlink",
}
#: Methods that send nothing themselves (or are botocore's).
_NOT_COMMANDS = {
    "_get_credentials",
    "aclose",
    "append",
    "close",
    "create_table",
    "describe_table",
    "get_caller_identity",
    "execute",
    "execute_command",  # store._queue: the Call's own command
    "get_node_from_key",
    "get_primaries",
    "list_tables",
    "pipeline",
}


def test_rules_restrict_keys_and_the_channel_to_the_namespace() -> None:
    rule = acl.setuser("orders-prod", "svc", "pw")
    start = "ACL SETUSER svc reset on >pw ~orders-prod:* &orders-prod:invalidations "
    assert rule.startswith(start)
    assert "~*" not in rule and "&*" not in rule and "+@" not in rule
    assert acl.access_string("ns").split()[:3] == ["on", "~ns:*", "&ns:invalidations"]
    assert acl.access_string("ns").split()[3:] == [f"+{c}" for c in acl.commands()]


def _fenced_lines(path: Path) -> list[str]:
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line.strip())
    return lines


def test_operations_md_shows_the_codes_acl() -> None:
    (line,) = [s for s in _fenced_lines(ROOT / "docs/operations.md") if s.startswith("ACL SETUSER")]
    assert line == acl.setuser(), (
        "docs/operations.md's ACL differs from ddbcache_hooks.acl: replace it with the output "
        "of `ddbcache acl` (user app-cache, password secret)"
    )


def test_elasticache_md_shows_the_codes_access_string() -> None:
    text = (ROOT / "docs/elasticache.md").read_text()
    strings = re.findall(r'--access-string "([^"]*)"', text)
    ours = [s for s in strings if not s.startswith("off")]
    assert ours == [acl.access_string()], (
        "docs/elasticache.md's --access-string differs from ddbcache_hooks.acl: replace it "
        "with the output of `ddbcache acl --elasticache`"
    )


@pytest.mark.parametrize(
    ("error", "what", "allows"),
    [
        (
            NoPermissionError("this user has no permissions to run the 'hmget' command"),
            "command 'hmget'",
            ("hmget",),
        ),
        (
            ResponseError(
                "The user executing the script can't run this command or subcommand script: "
                f"{FILL_IF_LEASED.sha}, on @user_script:12."
            ),
            "a command of script fill_if_leased",
            ("hset",),
        ),
        (
            NoPermissionError("this user has no permissions to access one of the keys used"),
            "a key outside the user's key patterns",
            (),
        ),
        (ResponseError("ERR unknown command 'EVALSHA', with args"), "command 'EVALSHA'", ()),
        # Valkey's wordings
        (
            NoPermissionError("User app has no permissions to run the 'hmget' command"),
            "command 'hmget'",
            ("hmget",),
        ),
        (
            ResponseError(
                "ACL failure in script: User app has no permissions to run the 'hset' command "
                "script: on @user_script:1."
            ),
            "command 'hset'",
            ("hset",),
        ),
        (NoPermissionError("No permissions to access a key"), "a key outside", ()),
        (NoPermissionError("No permissions to access a channel"), "the near cache's channel", ()),
    ],
)
def test_a_refusal_names_what_was_refused(
    error: Exception, what: str, allows: tuple[str, ...]
) -> None:
    found = acl.refusal(error)
    assert found is not None and found.what.startswith(what)
    assert set(allows) <= set(found.commands)
    fix = acl.fix(found, "ns")
    assert acl.setuser("ns", "<user>", "<password>") in fix
    assert fix.startswith("the script runs" if found.script else "add ")
    assert all(f"+{name}" in fix.split("; ")[0] for name in allows)


@pytest.mark.parametrize(
    "error",
    [ResponseError("WRONGTYPE Operation against a key"), ConnectionError("refused"), ValueError()],
)
def test_other_errors_are_no_refusal(error: Exception) -> None:
    assert acl.refusal(error) is None


def test_a_refusal_is_counted_each_time_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from ddbcache_hooks.resilience import refused
    from ddbcache_hooks.stats import Stats

    stats = Stats()
    error = NoPermissionError("this user has no permissions to run the 'hset' command")
    with caplog.at_level("ERROR", logger="ddbcache_hooks"):
        assert refused(error, "once-ns", stats) and refused(error, "once-ns", stats)
        assert not refused(ResponseError("WRONGTYPE Operation"), "once-ns", stats)
    assert stats.snapshot()["redis_refused"] == 2
    (record,) = caplog.records
    assert record.levelname == "ERROR"
    assert "command 'hset'" in record.getMessage() and "once-ns:*" in record.getMessage()
    assert "add +hset to the user's ACL" in record.getMessage()
