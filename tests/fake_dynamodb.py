"""A small DynamoDB endpoint for the operations moto lacks, in front of a moto server.

``FakeDynamoDB`` is a real HTTP server speaking DynamoDB's JSON protocol. It
answers SearchVectors (euclidean distance over a list-of-numbers attribute of
the items moto holds), StartBulkPutItems / DescribeBulkOperation /
CancelBulkOperation / ListBulkOperations (a bulk load that the test finishes
with :meth:`FakeDynamoDB.finish_bulk_load`) and any ``extra`` operation the test
names (answered with ``{}``); every other request is forwarded to moto as it is.

``later_operations(session)`` makes a botocore / boto3 session's DynamoDB model
contain those operations whatever botocore is installed (botocore 1.44 has
them; older releases get them from ``tests/data/dynamodb-later-operations.json``),
plus any ``extra`` operations, through botocore's own loader search path.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from botocore.loaders import Loader

LATER = json.loads((Path(__file__).parent / "data" / "dynamodb-later-operations.json").read_text())
TARGET = "DynamoDB_20120810."


def later_operations(session: Any, tmp_path: Path, extra: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
    """Give ``session``'s DynamoDB model the later operations and ``extra`` ones.

    ``extra`` maps an operation name to its input members (``{"TableName": "TableArn"}``).
    Call before the session creates its first DynamoDB client.
    """
    botocore_session = getattr(session, "_session", session)
    loader = botocore_session.get_component("data_loader")
    # A loader of its own: the session's caches what it loads, and must load ours.
    model = json.loads(json.dumps(Loader().load_service_model("dynamodb", "service-2")))
    for name, shape in LATER["shapes"].items():
        model["shapes"].setdefault(name, shape)
    for name, operation in LATER["operations"].items():
        model["operations"].setdefault(name, operation)
    for name, members in dict(extra).items():
        model["shapes"][f"{name}Input"] = {
            "type": "structure",
            "required": sorted(members),
            "members": {member: {"shape": shape} for member, shape in members.items()},
        }
        model["shapes"][f"{name}Output"] = {"type": "structure", "members": {}}
        model["operations"][name] = {
            "name": name,
            "http": {"method": "POST", "requestUri": "/"},
            "input": {"shape": f"{name}Input"},
            "output": {"shape": f"{name}Output"},
        }
    version = model["metadata"]["apiVersion"]
    folder = tmp_path / "botocore-data" / "dynamodb" / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service-2.json").write_text(json.dumps(model))
    loader.search_paths.insert(0, str(tmp_path / "botocore-data"))


class FakeDynamoDB:
    """The HTTP server; ``url`` is its endpoint. Use as a context manager."""

    def __init__(self, moto_url: str, vector_attribute: str = "v", extra: tuple[str, ...] = ()):
        self.moto_url = moto_url
        self.vector_attribute = vector_attribute
        self.extra = set(extra)
        self.bulk_loads: dict[str, dict[str, Any]] = {}
        self.handled: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                operation = target.removeprefix(TARGET)
                answer = getattr(fake, f"_{operation}", None)
                if answer is None and operation in fake.extra:
                    answer = fake._extra
                if answer is None:
                    status, reply = fake._forward(target, body)
                else:
                    fake.handled.append(operation)
                    status, reply = answer(json.loads(body or b"{}"))
                    reply = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(reply)))
                self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDynamoDB:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- moto -------------------------------------------------------------------------

    def _forward(self, target: str, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.moto_url,
            data=body,
            method="POST",
            headers={
                "X-Amz-Target": target,
                "Content-Type": "application/x-amz-json-1.0",
                "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/"
                "dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def moto(self, operation: str, **params: Any) -> dict[str, Any]:
        status, reply = self._forward(TARGET + operation, json.dumps(params).encode())
        answer: dict[str, Any] = json.loads(reply)
        assert status == 200, answer
        return answer

    def _items(self, table: str) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"TableName": table}
        while True:
            page = self.moto("Scan", **params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- operations moto lacks ----------------------------------------------------------

    def _SearchVectors(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        query = [float(v["N"]) for v in params["SearchVector"]]
        scored = []
        for item in self._items(params["TableName"].rsplit("/", 1)[-1]):
            vector = item.get(self.vector_attribute, {}).get("L")
            if vector and len(vector) == len(query):
                distance = math.dist(query, [float(v["N"]) for v in vector])
                scored.append({"Item": item, "Score": distance})
        scored.sort(key=lambda result: result["Score"])
        return 200, {"SearchResults": scored[: params["TopK"]]}

    def _StartBulkPutItems(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arn = f"arn:aws:dynamodb:us-east-1:123456789012:bulk-operation/{uuid.uuid4().hex}"
        self.bulk_loads[arn] = {
            "BulkOperationArn": arn,
            "BulkOperationStatus": "IN_PROGRESS",
            "TableDetails": [{"TableName": params["TableName"], "TableId": uuid.uuid4().hex}],
            "InputS3Configuration": params["InputS3Configuration"],
            "OutputS3Configuration": params["OutputS3Configuration"],
            "StartTime": time.time(),
        }
        return 200, {"BulkOperationDescription": self.bulk_loads[arn]}

    def _DescribeBulkOperation(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        description = self.bulk_loads.get(params["BulkOperationArn"])
        if description is None:
            return 400, {
                "__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException",
                "message": "Requested resource not found",
            }
        return 200, {"BulkOperationDescription": description}

    def _CancelBulkOperation(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        description = self.bulk_loads[params["BulkOperationArn"]]
        description["BulkOperationStatus"] = "CANCELLING"
        return 200, {
            "BulkOperationArn": description["BulkOperationArn"],
            "BulkOperationStatus": "CANCELLING",
        }

    def _ListBulkOperations(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        summaries = [
            {k: d[k] for k in ("BulkOperationArn", "BulkOperationStatus", "StartTime")}
            for d in self.bulk_loads.values()
        ]
        return 200, {"BulkOperationsSummaryList": summaries}

    def _extra(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {}

    def finish_bulk_load(
        self, arn: str, items: list[dict[str, Any]], status: str = "COMPLETED"
    ) -> None:
        """The load writes ``items`` (straight into moto: no registered client sees it)."""
        description = self.bulk_loads[arn]
        table = description["TableDetails"][0]["TableName"]
        for item in items:
            self.moto("PutItem", TableName=table, Item=item)
        description["BulkOperationStatus"] = status
        description["EndTime"] = time.time()
