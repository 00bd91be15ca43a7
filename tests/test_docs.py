"""Every code block of README.md and docs/*.md: run, or checked another way.

- ``python`` blocks run, each in a fresh interpreter, against a real Redis and
  moto's DynamoDB server. The test swaps placeholders (:data:`PLACEHOLDERS`: the
  example Redis and ElastiCache URLs) and adds what a fragment takes from the
  text around it (:data:`CONTEXT`: ``session``, ``redis_url``…), never editing
  the docs. A block preceded by ``<!-- not-run: reason -->`` is compiled, and
  every ``ddbcache_hooks`` name it imports or uses and every option it passes
  to ``register()`` must exist.
- ``sh`` blocks: each ``ddbcache`` / ``python -m ddbcache_hooks`` command line
  must parse with the CLI's own parser.
- ``json`` blocks must parse. Fences without a language are output or text.
- The ACL lines are the code's (tests/unit/test_acl.py).

Each block is one test, named ``file:line``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import boto3
import pytest

from ddbcache_hooks import cli
from ddbcache_hooks._redis_server import RedisServer
from ddbcache_hooks.config import OPTIONS

ROOT = Path(__file__).parents[1]
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")


class Block(NamedTuple):
    path: str
    line: int
    lang: str
    code: str
    not_run: str  # the reason, or ""

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marker = NOT_RUN.search(before)
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            name = str(path.relative_to(ROOT))
            found.append(
                Block(name, i + 1, fence.group(2), code, marker.group(1) if marker else "")
            )
            i = end + 1
    return found


BLOCKS = blocks()
#: Blocks that need the async extra (aioboto3, FastAPI): run by the tests_async session.
ASYNC = ("aioboto3", "register_async")

#: Example values in the docs, and what the test puts in their place.
PLACEHOLDERS = {
    "rediss://my-cache.xxxxxx.cache.amazonaws.com:6379": "{redis}",
    "rediss://cache.example:6379": "{redis}",
    "redis://my-cache:6379": "{redis}",
    "redis=None,  # redis.Redis": "redis='{redis}',  # redis.Redis",  # README's signature
}

#: What a fragment takes from the prose around it, keyed by the block's first line.
CONTEXT: dict[str, str] = {
    "connection = Order._get_connection().connection": """
import ddbcache_hooks
from pynamodb.attributes import UnicodeAttribute
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

class Order(Model):
    class Meta:
        table_name = "orders"
        region = "us-east-1"
    id = UnicodeAttribute(hash_key=True)
""",
    "ddbcache_hooks.register(": "import ddbcache_hooks\noptions = {}",
    "registration = await ddbcache_hooks.register_async(aioboto3.Session()": (
        "import aioboto3\nimport ddbcache_hooks"
    ),
    "registration = await ddbcache_hooks.register_async(": (
        "import aioboto3\nimport ddbcache_hooks\ntarget = aioboto3.Session()\nredis = '{redis}'\n"
        "options = {}"
    ),
    "from ddbcache_hooks import TablePolicy, register": "import boto3\n"
    "session = boto3.Session()\nredis_url = '{redis}'",
    "register(": "import boto3\nfrom ddbcache_hooks import TablePolicy, register\n"
    "session = boto3.Session()\nredis_url = '{redis}'",
    'client = CacheClient(boto3.client("dynamodb"), redis_client, ttl=300)': "import boto3\n"
    "import redis\nfrom ddbcache_hooks.compat import CacheClient\n"
    "redis_client = redis.Redis.from_url('{redis}')",
    "session = boto3.Session()": "import boto3\nimport redis\nimport ddbcache_hooks\n"
    "redis_client = redis.Redis.from_url('{redis}')",
    "from ddbcache_hooks.streams import Consumer": "import threading\n"
    "threading.Timer(2.0, lambda: consumer.stop()).start()  # run() returns when stopped",
}

#: What runs after a block that defines something to use (an app, a registration).
AFTER: dict[str, str] = {
    "import aioboto3": """
import asyncio

async def _use():
    async with app.router.lifespan_context(app):
        try:
            await get_order("42")
        except HTTPException as exc:
            assert exc.status_code == 404
        else:
            raise AssertionError("order 42 does not exist yet")
        await mark_paid("42")
        assert (await get_order("42"))["paid"] is True

asyncio.run(_use())
""",
    "registration = await ddbcache_hooks.register_async(aioboto3.Session()": (
        "await registration.aclose()"
    ),
}

# Runs a block: top-level ``await`` is allowed (the docs' async fragments).
RUNNER = """
import ast, asyncio, sys
source = sys.stdin.read()
code = compile(source, "<doc block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def _first_line(block: Block) -> str:
    return block.code.strip().splitlines()[0]


def _context(block: Block, table: dict[str, str]) -> str:
    first = _first_line(block)
    keys = [k for k in table if first.startswith(k)]
    return table[max(keys, key=len)] if keys else ""


def program(block: Block, redis_url: str) -> str:
    code = block.code
    for example, value in PLACEHOLDERS.items():
        code = code.replace(example, value)
    before = _context(block, CONTEXT)
    after = _context(block, AFTER)
    return "\n".join([before, code, after]).replace("{redis}", redis_url)


def _params(*langs: str, run: bool | None = None) -> list[Any]:
    out = []
    for block in BLOCKS:
        if block.lang not in langs or (run is not None and bool(block.not_run) == run):
            continue
        marks = [pytest.mark.aio] if run and any(a in block.code for a in ASYNC) else []
        out.append(pytest.param(block, id=block.id, marks=marks))
    return out


def _make_tables(endpoint: str) -> None:
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    for name in ("orders", "users"):
        client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
        )


def run_block(
    block: Block, redis_server: RedisServer, moto_url: str
) -> subprocess.CompletedProcess[str]:
    _make_tables(moto_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDBCACHE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        AWS_ENDPOINT_URL=moto_url,
        AWS_DEFAULT_REGION="us-east-1",
        DDBCACHE_REDIS_URL=redis_server.url,
        DDBCACHE_NAMESPACE="doc" + uuid.uuid4().hex[:8],
        DDBCACHE_REDIS_TIMEOUT_MS="1000",
    )
    return subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=program(block, redis_server.url),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("block", _params("python", run=True))
def test_python_block_runs(block: Block, redis_server: RedisServer, moto_url: str) -> None:
    print(f"running {block.id}")
    done = run_block(block, redis_server, moto_url)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("block", _params("python", run=False))
def test_python_block_not_run_is_checked(block: Block) -> None:
    import ddbcache_hooks

    print(f"checking {block.id} (not run: {block.not_run})")
    tree = ast.parse(block.code)  # a syntax error fails here
    options = {option.name for option in OPTIONS}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddbcache_hooks"):
            module = __import__(node.module or "", fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{block.id}: {node.module}.{alias.name}"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "ddbcache_hooks"
        ):
            assert hasattr(ddbcache_hooks, node.attr), f"{block.id}: ddbcache_hooks.{node.attr}"
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("register",):
            unknown = {k.arg for k in node.keywords if k.arg} - options - {"target", "redis"}
            assert not unknown, f"{block.id}: register() has no option {unknown}"


@pytest.mark.parametrize("block", _params("sh"))
def test_shell_block_commands_parse(block: Block, capsys: Any) -> None:
    print(f"checking {block.id}")
    text = re.sub(r"\\\n\s*", " ", block.code)
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if words[:3] == ["python", "-m", "ddbcache_hooks"]:
            words = ["ddbcache", *words[3:]]
        if words[:1] == ["ddbcache"]:
            try:
                cli.build_parser().parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{block.id}: `{line.strip()}` does not parse: {capsys.readouterr()}")


@pytest.mark.parametrize("block", _params("json"))
def test_json_block_parses(block: Block) -> None:
    json.loads(block.code)


def test_every_block_is_run_or_checked() -> None:
    """No block of a language this test does not know (a new one needs a check here)."""
    for block in BLOCKS:
        print(f"{block.id}: {block.lang or 'text'}{' (not run)' if block.not_run else ''}")
        assert block.lang in ("python", "sh", "json", ""), f"{block.id}: ```{block.lang}"
    assert sum(b.lang == "python" and not b.not_run for b in BLOCKS) >= 10


def test_an_edited_block_calling_what_does_not_exist_fails(
    redis_server: RedisServer, moto_url: str
) -> None:
    readme = next(
        b
        for b in BLOCKS
        if b.id.startswith("README.md") and "table.get_item" in b.code and ".register(" in b.code
    )
    broken = readme._replace(code=readme.code.replace(".register(", ".register_cache("))
    done = run_block(broken, redis_server, moto_url)
    assert done.returncode != 0 and "register_cache" in done.stderr
