"""What a hit looks like: the synthesized ResponseMetadata (no I/O)."""

from __future__ import annotations

import os
import re

from ddbcache_hooks import responses


def test_response_metadata_is_shaped_as_botocores() -> None:
    meta = responses.response_metadata(responses.HIT)
    assert set(meta) == {"RequestId", "HTTPStatusCode", "HTTPHeaders", "RetryAttempts"}
    assert meta["HTTPStatusCode"] == 200 and meta["RetryAttempts"] == 0
    headers = meta["HTTPHeaders"]
    assert headers["x-ddbcache"] == "hit" and headers["x-amzn-requestid"] == meta["RequestId"]
    assert all(name == name.lower() for name in headers)  # botocore lower-cases them
    http_date = r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"
    assert re.fullmatch(http_date, headers["date"])
    # DynamoDB's request ids are 52 upper-case letters and digits.
    assert meta["RequestId"].startswith("ddbcache-")
    assert not re.fullmatch(r"[A-Za-z0-9]{52}", meta["RequestId"])
    assert responses.response_metadata(responses.STALE, 2)["RetryAttempts"] == 2


def test_request_ids_are_unique_and_differ_in_a_forked_child() -> None:
    ids = {responses.response_metadata(responses.HIT)["RequestId"] for _ in range(1000)}
    assert len(ids) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its first id and exits at once
        os.write(write, responses.response_metadata(responses.HIT)["RequestId"].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    prefix = responses.response_metadata(responses.HIT)["RequestId"].rsplit("-", 1)[0]
    assert child.startswith("ddbcache-") and not child.startswith(prefix + "-")


def test_hit_response_with_and_without_metadata() -> None:
    hit = responses.hit_response({"Item": {"pk": {"S": "a"}}}, 0, None, "t")
    assert hit["ResponseMetadata"]["HTTPHeaders"]["x-ddbcache"] == "hit"
    assert hit["CacheMetadata"]["CacheHit"] is True
    bare = responses.hit_response({"Item": {"pk": {"S": "a"}}}, 0, None, "t", metadata=False)
    assert "ResponseMetadata" not in bare and bare["CacheMetadata"]["CacheHit"] is True
