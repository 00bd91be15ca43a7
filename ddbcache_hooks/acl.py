"""The Redis commands the library sends, and the ACL rules that allow exactly them.

One list for the code, the docs and ``ddbcache acl`` / ``ddbcache doctor``: the
commands the Lua scripts call (read from their sources) and the commands the
library sends itself (:data:`PLAIN`). Keys are the namespace's (``<ns>:*``), the
only channel is its near-cache channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from .effects import Script
from .near import CHANNEL_SUFFIX

#: Commands the library sends itself (not from a script), and what for.
PLAIN: dict[str, str] = {
    "ping": "start-up check, health checks, ddbcache doctor",
    "info": "cluster-mode detection at start-up, ddbcache doctor (the scripts call it too)",
    "time": "Registration.peek: the server's clock (the scripts call it too)",
    "script|load": "loading the Lua scripts",
    "evalsha": "running them",
    "hmget": "Registration.peek and ddbcache get: an item's entry (the scripts call it too)",
    "get": "cluster mode: the namespace's key layout record, at start-up",
    "hstrlen": "checking a key a lookup timed out on",
    "unlink": "deleting a poisoned key; ddbcache flush",
    "set": "sharing a key schema learned with DescribeTable",
    "publish": "telling near caches what a write dropped",
    "subscribe": "near cache: hearing other processes' writes",
    "hset": "counters (metrics_flush_s); stream checkpoints",
    "expire": "the counters' expiry; the key layout record's (cluster mode)",
    "pexpire": "stream checkpoints' expiry",
    "hdel": "stream checkpoints",
    "hgetall": "stream checkpoints; ddbcache stats",
    "hkeys": "Registration.peek and ddbcache get: the variants an item holds",
    "pttl": "ddbcache stats: when each process last flushed",
    "scan": "ddbcache flush and stats",
    "cluster|slots": "cluster mode: the slot map (redis-py)",
    "command": "cluster mode: where a command's keys are (redis-py)",
}

_CALL = re.compile(r"redis\.p?call\(\s*")
_NAME = re.compile(r"""['"]([A-Za-z]+)['"]""")


def script_commands(scripts: Iterable[Script]) -> set[str]:
    """The commands ``redis.call`` / ``redis.pcall`` run in these scripts (lower case)."""
    found: set[str] = set()
    for script in scripts:
        for call in _CALL.finditer(script.source):
            name = _NAME.match(script.source, call.end())
            if name is None:  # a computed command name could not be checked against an ACL
                line = script.source[call.start() : script.source.find("\n", call.start())]
                raise ValueError(f"script {script.name}: command name is not a literal: {line}")
            found.add(name.group(1).lower())
    return found


def _all_scripts() -> tuple[Script, ...]:
    from .scripts import SCRIPTS
    from .streams.state import SCRIPTS as STREAM_SCRIPTS

    return (*SCRIPTS, *STREAM_SCRIPTS)


def commands() -> list[str]:
    """Every command the library may send, sorted (``script|load``: a subcommand)."""
    return sorted(script_commands(_all_scripts()) | set(PLAIN))


def key_pattern(namespace: str) -> str:
    """The keys of a namespace (namespaces hold no glob characters: see config)."""
    return f"{namespace}:*"


def channel(namespace: str) -> str:
    return namespace + CHANNEL_SUFFIX


def rule_terms(namespace: str) -> list[str]:
    """The ACL terms after ``on`` and the password: keys, channel, commands."""
    return [
        f"~{key_pattern(namespace)}",
        f"&{channel(namespace)}",
        *(f"+{name}" for name in commands()),
    ]


def access_string(namespace: str = "CC") -> str:
    """An ElastiCache user's ``--access-string``."""
    return " ".join(["on", *rule_terms(namespace)])


def setuser(namespace: str = "CC", user: str = "app-cache", password: str = "secret") -> str:
    """A Redis ``ACL SETUSER`` command line (``reset`` first: re-running it gives the same user)."""
    return " ".join(["ACL SETUSER", user, "reset", "on", f">{password}", *rule_terms(namespace)])


class Refusal(NamedTuple):
    """A command Redis refused for this user: a configuration error, not an outage."""

    #: What was refused, for people: "command 'hmget'", "a command of script fill_if_leased", …
    what: str
    #: The commands that would allow it (one; a script's; none for a key or channel).
    commands: tuple[str, ...] = ()
    #: A script's refusal: one of ``commands`` (Redis does not say which) is missing.
    script: bool = False


# Redis's and Valkey's wordings ("this user has no permissions…", "User u has no…").
_COMMAND = re.compile(r"no permissions to run the '([^']+)' command", re.IGNORECASE)
_KEY = re.compile(r"no permissions to access (?:one of the keys|a key)", re.IGNORECASE)
_CHANNEL = re.compile(r"no permissions to access (?:one of the channels|a channel)", re.IGNORECASE)
_UNKNOWN = re.compile(r"unknown command [`']([^`']+)[`']", re.IGNORECASE)
_SHA = re.compile(r"script: ([0-9a-f]{40})")


def refusal(exc: BaseException) -> Refusal | None:
    """What an ACL refusal (NOPERM, or a script's command refused) names; None otherwise.

    A script's refusal does not say which of its commands was refused; the
    script's SHA in the message names the script, and so its commands.
    """
    text = str(exc)
    found = _COMMAND.search(text)
    if found:
        return Refusal(f"command {found.group(1)!r}", (found.group(1).lower(),))
    if _KEY.search(text):
        return Refusal("a key outside the user's key patterns")
    if _CHANNEL.search(text):
        return Refusal("the near cache's channel")
    if "user executing the script can't" in text:
        sha = _SHA.search(text)
        script = next((s for s in _all_scripts() if sha and s.sha == sha.group(1)), None)
        if script is None:
            return Refusal("a command of a Lua script", tuple(commands()), True)
        used = tuple(sorted(script_commands([script])))
        return Refusal(f"a command of script {script.name}", used, True)
    found = _UNKNOWN.search(text)
    if found:  # renamed or disabled on the server (rename-command, a managed service)
        name = found.group(1)
        return Refusal(f"command {name!r} (unknown to the server)", (name.lower(),))
    return None


def fix(refused: Refusal, namespace: str) -> str:
    """How to allow what was refused: the terms to add, and the whole rule."""
    terms = " ".join([f"+{name}" for name in refused.commands] or rule_terms(namespace)[:2])
    add = (
        f"the script runs {terms}: add the ones the user lacks (ddbcache doctor names them)"
        if refused.script
        else f"add {terms} to the user's ACL"
    )
    return (
        f"{add} (keys ~{key_pattern(namespace)}); "
        f"the whole rule: {setuser(namespace, '<user>', '<password>')}"
    )
