"""Write-through: the item image a write produced, and the intent that guards its fill.

With ``write_through`` on, a PutItem, an UpdateItem answered with
``ReturnValues="ALL_NEW"`` and a DeleteItem store the item they produced (a
DeleteItem: the item's absence) in the entry a plain GetItem reads, instead of
only dropping it. Two writers' ``after-call`` steps may arrive in the opposite
order from the order DynamoDB applied their writes, so a write registers an
*intent* on the item before it is sent (:data:`~ddbcache_hooks.scripts.REGISTER_INTENT`)
and, after DynamoDB answered, stores its image only if nothing touched the item
in between (:data:`~ddbcache_hooks.scripts.WRITE_THROUGH`, which also runs the
item's invalidation). docs/consistency.md, "Write-through", argues the rule.

The stored image must be what a strongly consistent GetItem returns:
:func:`canonical_item` renders numbers the way DynamoDB returns them and
refuses what it cannot render exactly (such a write only invalidates).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .codec import CorruptEntry
from .effects import Call, Op, RedisBatch
from .keys import NotCanonical, TableRef
from .near import encode_message
from .scripts import BULK_MARK, REGISTER_INTENT, TABLE_TOKENS, WRITE_THROUGH, WriteThroughStatus
from .store import new_token

if TYPE_CHECKING:
    from .codec import Codec
    from .config import Settings
    from .plan import Invalidation, Planner, WritePlan

log = logging.getLogger("ddbcache_hooks")

T = TypeVar("T")

#: How long an intent blocks other writes' fills of its item at most (ms): a
#: write that takes longer stores nothing; a writer that crashed blocks the
#: item's write-through for this long, never correctness.
INTENT_MS = 10_000

#: The operations that may store what they wrote.
OPERATIONS = frozenset({"PutItem", "UpdateItem", "DeleteItem"})

#: DynamoDB's number rules: at most 38 significant digits; a magnitude between
#: 1E-130 and 9.9999999999999999999999999999999999999E+125 (or zero).
MAX_DIGITS = 38
MIN_EXPONENT = -130
MAX_EXPONENT = 125
#: A leading "+" is refused: an independent implementation (dynalite) rejects it.
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")

#: Why a write that could have stored its image did not (``write_fills_skipped_<reason>``).
SKIP_REASONS = (
    "uncertain",  # an error, an unknown outcome, a cancellation: only the invalidation
    "rejected",  # DynamoDB applied nothing (a failed condition, ...)
    "redis",  # the intent could not be registered, or the fill not sent
    "intervened",  # an invalidation touched the item after the intent
    "superseded",  # another write registered an intent after this one
    "busy",  # another write's intent was still in flight
    "table",  # the table's entries were dropped meanwhile
    "expired",  # the write outlasted its intent
    "unrenderable",  # a value the cache cannot render as DynamoDB returns it, or too large
    "key_unknown",  # a PutItem whose table's key schema this process does not know yet
    "no_image",  # an UpdateItem not answered with ALL_NEW
    "bulk_load",  # a bulk load writes to the table
)

_STATUS_REASONS = {
    WriteThroughStatus.INTERVENED: "intervened",
    WriteThroughStatus.SUPERSEDED: "superseded",
    WriteThroughStatus.BUSY: "busy",
    WriteThroughStatus.TABLE: "table",
    WriteThroughStatus.EXPIRED: "expired",
}


class NotRenderable(ValueError):
    """A value whose form in a GetItem response the cache cannot tell exactly."""


def canonical_number(text: Any) -> str:
    """A number as DynamoDB returns it: no exponent, no leading or trailing zeros.

    ``"1.50"`` -> ``"1.5"``, ``"0100"`` -> ``"100"``, ``"1E+2"`` -> ``"100"``,
    ``"-0"`` -> ``"0"``. Raises :class:`NotRenderable` for anything DynamoDB
    rejects (more than 38 significant digits, a magnitude out of its range, not
    a number) or that this function cannot be sure of.
    """
    if not isinstance(text, str) or not _NUMBER.match(text):
        raise NotRenderable(f"not a DynamoDB number: {text!r}")
    try:
        sign, digit_tuple, exponent = Decimal(text).as_tuple()
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        raise NotRenderable(f"not a DynamoDB number: {text!r}") from None
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:
        return "0"
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    if len(digits) > MAX_DIGITS:
        raise NotRenderable(f"more than {MAX_DIGITS} significant digits: {text!r}")
    adjusted = exponent + len(digits) - 1
    if not MIN_EXPONENT <= adjusted <= MAX_EXPONENT:
        raise NotRenderable(f"outside DynamoDB's number range: {text!r}")
    if exponent >= 0:
        body = digits + "0" * exponent
    else:
        point = len(digits) + exponent
        body = digits[:point] + "." + digits[point:] if point > 0 else "0." + "0" * -point + digits
    return ("-" if sign else "") + body


def _binary(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")  # botocore sends a str blob as its UTF-8 bytes
    raise NotRenderable(f"a binary value of type {type(value).__name__}")


def canonical_value(value: Any) -> dict[str, Any]:
    """One AttributeValue as a GetItem returns it (sets keep their order)."""
    if not isinstance(value, Mapping) or len(value) != 1:
        raise NotRenderable(f"not an AttributeValue: {value!r}")
    ((kind, inner),) = value.items()
    if kind == "S":
        if not isinstance(inner, str):
            raise NotRenderable("S value is not a string")
        return {"S": inner}
    if kind == "N":
        return {"N": canonical_number(inner)}
    if kind == "B":
        return {"B": _binary(inner)}
    if kind == "BOOL":
        if not isinstance(inner, bool):
            raise NotRenderable("BOOL value is not a boolean")
        return {"BOOL": inner}
    if kind == "NULL":
        if inner is not True:
            raise NotRenderable("NULL value is not True")
        return {"NULL": True}
    if kind in ("SS", "NS", "BS"):
        if not isinstance(inner, (list, tuple)) or not inner:
            raise NotRenderable(f"{kind} value is not a non-empty list")
        if kind == "SS":
            if not all(isinstance(s, str) for s in inner):
                raise NotRenderable("SS member is not a string")
            members: list[Any] = list(inner)
        elif kind == "NS":
            members = [canonical_number(n) for n in inner]
        else:
            members = [_binary(b) for b in inner]
        if len(set(members)) != len(members):
            raise NotRenderable(f"{kind} value has duplicate members")
        return {kind: members}
    if kind == "L":
        if not isinstance(inner, (list, tuple)):
            raise NotRenderable("L value is not a list")
        return {"L": [canonical_value(v) for v in inner]}
    if kind == "M":
        return {"M": canonical_item(inner)}
    raise NotRenderable(f"unknown AttributeValue type {kind!r}")


def canonical_item(item: Any) -> dict[str, Any]:
    """An item (attribute name -> AttributeValue) as a GetItem returns it."""
    if not isinstance(item, Mapping):
        raise NotRenderable("an item is not a map")
    out = {}
    for name, value in item.items():
        if not isinstance(name, str):
            raise NotRenderable(f"attribute name {name!r} is not a string")
        out[name] = canonical_value(value)
    return out


@dataclass(slots=True)
class Intent:
    """A write's write-through target (decided while planning) and its intent."""

    table: TableRef
    #: The item's hash, the table's token hash, the plain GetItem's variant field.
    key: str
    token_key: str
    field: str
    ttl_ms: int
    negative_ttl_ms: int
    max_entry_bytes: int
    #: Set by the registration (before the write is sent): the intent's token, its
    #: number, the server's identity and the table's item token at that moment.
    token: str = ""
    number: int = 0
    server: bytes = b""
    item_token: bytes = b""

    @property
    def registered(self) -> bool:
        return bool(self.token)


def target(planner: Planner, plan: WritePlan) -> Intent | str | None:
    """The entry a write may fill, decided without I/O; a skip reason; None when off.

    Only a PutItem, an UpdateItem asking for ``ALL_NEW`` and a DeleteItem of a
    table with ``write_through`` on whose GetItems are cached; the entry is the
    one of a GetItem without projection. A PutItem needs the table's key schema
    known in process (learned by an earlier write's invalidation, or the
    ``key_schema`` option): planning does no I/O.
    """
    if plan.operation not in OPERATIONS:
        return None
    params = plan.params
    try:
        refs = plan.location.refs(params["TableName"])
        if len(refs) != 1:
            return None
        (table,) = refs
        config = planner.settings.for_table(table.name)
        if config is None or not config.write_through or not config.caches("GetItem"):
            return None
        if plan.operation == "UpdateItem" and params.get("ReturnValues") != "ALL_NEW":
            return "no_image"
        if plan.operation == "PutItem":
            schema = planner.key_schema(table)
            key = schema.project(params["Item"]) if schema is not None else None
            if key is None:
                return "key_unknown"
        else:
            key = params["Key"]
        item_key = planner.item_key(table, key)
    except (NotCanonical, KeyError, TypeError, AttributeError, ValueError):
        return None
    return Intent(
        table,
        item_key,
        planner.layout.tokens_for(table, item_key),
        "",  # the variant of a GetItem naming only TableName and Key
        config.ttl_ms["item"],
        config.ttl_ms["item_negative"],
        config.max_entry_bytes,
    )


def image(plan: WritePlan, parsed: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a GetItem of the item returns now that the write succeeded; None: unknown.

    Raises :class:`NotRenderable` for an image the cache cannot render exactly.
    """
    if plan.operation == "PutItem":
        return {"Item": canonical_item(plan.params["Item"])}
    if plan.operation == "DeleteItem":
        return {}
    attributes = parsed.get("Attributes")
    if plan.params.get("ReturnValues") != "ALL_NEW" or not isinstance(attributes, Mapping):
        return None
    return {"Item": canonical_item(attributes)}


def payload(
    plan: WritePlan, intent: Intent, parsed: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, int, str | None]:
    """(what a GetItem of the item returns now, or None; its TTL; why None)."""
    if parsed is None or "Error" in parsed:
        return None, 0, "uncertain"
    if intent.item_token[:1] == BULK_MARK:
        return None, 0, "bulk_load"
    try:
        found = image(plan, parsed)
    except NotRenderable as exc:
        log.debug("write-through of %s skipped: %s", intent.key, exc)
        return None, 0, "unrenderable"
    if found is None:
        return None, 0, "no_image"
    return found, intent.ttl_ms if "Item" in found else intent.negative_ttl_ms, None


def without_item(invalidation: Invalidation, key: str) -> Invalidation:
    """The rest of a write's invalidation: the completion script drops the item."""
    from .plan import Invalidation

    return Invalidation(
        [(t, k) for t, k in invalidation.items if k != key],
        dict(invalidation.tables),
        dict(invalidation.lifecycle),
        dict(invalidation.generations),
    )


def register(intent: Intent, token_ttl_ms: int, *, cluster: bool) -> Op[None]:
    """Register the intent and read the table's item token: one round trip."""
    token = new_token()
    fresh = new_token()
    calls = [
        Call(
            REGISTER_INTENT,
            (
                intent.key,
                *(() if cluster else (intent.token_key,)),
                token,
                INTENT_MS,
                fresh,
                token_ttl_ms,
            ),
            1 if cluster else 2,
        )
    ]
    if cluster:
        calls.append(Call(TABLE_TOKENS, (intent.token_key, fresh, token_ttl_ms), 1))
    replies = yield RedisBatch(calls)
    number, item_token, server, _ = replies[0]
    if cluster:
        item_token = replies[1][0]
    intent.token, intent.number = token, int(number)
    intent.server = bytes(server)
    intent.item_token = bytes(item_token) if item_token else b""


def completion_call(
    intent: Intent,
    entry: bytes,
    ttl_ms: int,
    generation_part: str,
    settle_ms: int,
    *,
    cluster: bool,
) -> Call:
    """The item's invalidation and, if the intent allows it, ``entry``'s fill."""
    return Call(
        WRITE_THROUGH,
        (
            intent.key,
            *(() if cluster else (intent.token_key,)),
            intent.token,
            intent.number,
            intent.server,
            intent.item_token,
            generation_part,
            entry,
            ttl_ms,
            settle_ms,
            intent.field,
        ),
        1 if cluster else 2,
    )


def release_call(intent: Intent) -> Call:
    """Drop the intent of a write DynamoDB applied nothing of."""
    return Call(None, ("HDEL", intent.key, "w:" + intent.token))


def with_calls(op: Op[T], first: list[Call], last: list[Call]) -> Op[tuple[T, list[Any]]]:
    """Run ``op`` with ``first`` and ``last`` sent in its (only) batch: one round trip.

    Returns the step's result and the replies of ``first``.
    """
    try:
        effect = next(op)
    except StopIteration as done:
        replies = yield RedisBatch([*first, *last])
        return done.value, list(replies[: len(first)])
    ours: list[Any] = []
    sent = False
    while True:
        if isinstance(effect, RedisBatch) and not sent:
            sent = True
            replies = yield RedisBatch([*first, *effect.calls, *last], effect.errors_as_values)
            ours = list(replies[: len(first)])
            result: Any = list(replies[len(first) : len(first) + len(effect.calls)])
        else:
            result = yield effect
        try:
            effect = op.send(result)
        except StopIteration as done:
            return done.value, ours


def publish_call(channel: str, key: str) -> Call:
    """Tell the near caches about the item (its invalidation is not in the batch's message)."""
    return Call(None, ("PUBLISH", channel, encode_message([key], [])))


def reason_of(status: int) -> str | None:
    """The skip reason of a :data:`WRITE_THROUGH` status (None: stored or nothing to store)."""
    try:
        return _STATUS_REASONS.get(WriteThroughStatus(status))
    except ValueError:
        return "intervened"


class _Counters(Protocol):
    """What the steps use of stats.Stats (which imports this module's reasons)."""

    def incr(self, name: str, amount: int = 1, tables: Iterable[str] = ()) -> None: ...


class WriteThroughSteps:
    """The protocol's write-through steps (protocol.Protocol inherits them): a
    write's intent before it is sent, and after it, its invalidation and its
    fill in one script. Kept here, beside the rules they carry out."""

    # What the steps use of the protocol (set by protocol.Protocol.__init__).
    planner: Planner
    settings: Settings
    codec: Codec
    stats: _Counters
    cluster: bool
    channel: str
    token_ttl_ms: int

    def forget_locally(self, invalidation: Invalidation) -> None:
        raise NotImplementedError  # protocol.Protocol's

    def deliver(self, invalidation: Invalidation) -> Op[None]:
        raise NotImplementedError  # protocol.Protocol's

    def plan_through(self, plan: WritePlan) -> None:
        """Decide (no I/O) whether the write may store its image; count why not."""
        through = target(self.planner, plan)
        if isinstance(through, str):
            self.skip_write_fill(through)
            through = None
        plan.through = through

    def register_intent(self, plan: WritePlan) -> Op[None]:
        """before-call of a write-through write: its intent, one round trip."""
        assert isinstance(plan.through, Intent)
        yield from register(plan.through, self.token_ttl_ms, cluster=self.cluster)

    def release_intent(self, plan: WritePlan) -> Op[None]:
        """DynamoDB applied nothing: the write's intent no longer blocks other fills."""
        if isinstance(plan.through, Intent) and plan.through.registered:
            yield RedisBatch([release_call(plan.through)])

    def skip_write_fill(self, reason: str) -> None:
        self.stats.incr("write_fills_skipped")
        self.stats.incr(f"write_fills_skipped_{reason}")
        log.debug("write-through skipped: %s", reason)

    def _write_through(
        self, plan: WritePlan, intent: Intent, parsed: Mapping[str, Any] | None
    ) -> Op[None]:
        """The item's invalidation and its fill in one script, with the rest of the
        write's invalidation in the same round trip."""
        assert plan.invalidation is not None
        image, ttl_ms, reason = payload(plan, intent, parsed)
        fresh = new_token()
        entry = b""
        if image is not None:
            context = ""
            if self.codec.signs:
                generation = (intent.server + b"/" + fresh.encode()).decode("latin-1")
                context = "\x00".join((intent.key, intent.field, generation))
            try:
                entry = self.codec.encode(
                    image,
                    token=intent.item_token,
                    created_ms=int(time.time() * 1000),
                    context=context,
                )
            except CorruptEntry:  # a foreign table token: never store under it
                entry, reason = b"", "table"
            if len(entry) > intent.max_entry_bytes:
                entry, reason = b"", "unrenderable"
        invalidation = plan.invalidation
        rest = without_item(invalidation, intent.key)
        call = completion_call(
            intent, entry, ttl_ms, fresh, self.settings.settle_ms, cluster=self.cluster
        )
        last = []
        if self.settings.publish_invalidations:
            last.append(publish_call(self.channel, intent.key))
        self.forget_locally(invalidation)
        _, replies = yield from with_calls(self.deliver(rest), [call], last)
        self.forget_locally(invalidation)
        self.stats.incr("invalidations", 1, [intent.table.name])
        status = int(replies[0][0])
        if status == WriteThroughStatus.STORED:
            self.stats.incr("write_fills", tables=[intent.table.name])
            return
        reason = reason_of(status) or reason
        if reason is not None:
            self.skip_write_fill(reason)
