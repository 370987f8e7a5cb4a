"""The embedded AWS: a moto server on loopback, over real HTTP."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from moto.core.serialize import SERVICE_SPECIFIC_SERIALIZERS, JSONSerializer
from moto.dynamodb import models as moto_dynamodb
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

LOCAL_CREDENTIALS = {
    # moto accepts any credentials; these keep boto3 from looking for real ones
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def ensure_local_credentials() -> None:
    """Dummy credentials for the local stack, unless the environment already has some."""
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)


class TableWrites:
    """Writes to each table through this process's moto servers, counted, so that a stream reader in
    this process (the local stack's event source mapping) can wait for the next write instead of
    reading an empty stream every few milliseconds; a reader of a server elsewhere polls as before."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._counts: dict[str, int] = {}

    def note(self, tables: Iterable[str]) -> None:
        with self._changed:
            for table in tables:
                self._counts[table] = self._counts.get(table, 0) + 1
            self._changed.notify_all()

    def count(self, table: str) -> int:
        with self._changed:
            return self._counts.get(table, 0)

    def wait(self, table: str, seen: int, timeout: float) -> bool:
        """Whether ``table`` was written since its count was ``seen``, waiting up to ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: self._counts.get(table, 0) != seen, timeout)


TABLE_WRITES = TableWrites()
_SERVED_HERE: set[str] = set()  # the endpoints this process's MotoServers serve


def served_here(endpoint_url: str) -> bool:
    """Whether a MotoServer of this process serves ``endpoint_url`` (its writes reach TABLE_WRITES)."""
    return endpoint_url.rstrip("/") in _SERVED_HERE


class DynamoDBTwin:
    """WSGI middleware that makes moto's DynamoDB behave as DynamoDB does where the system relies on it.

    - **Atomic conditional writes.** In DynamoDB every conditional write is atomic; moto checks the
      condition and writes in two steps, so under concurrent requests two conditional claims of one
      row could both succeed (seen in the test suite). DynamoDB and DynamoDB Streams calls are
      serialised here; SQS and everything else stay concurrent (a long poll must hold no one up).
    - **One stream across a cancelled transaction.** moto rolls a cancelled ``TransactWriteItems``
      back by putting deep copies of the tables in place, stream shard included, while every shard
      iterator handed out before still points into the replaced shard: a stream reader would then
      read a stream nobody writes to any more (dispatch stalled after one refused branch claim).
      After a transaction the table's original shard object is kept in the restored table, with
      the restored records, so iterators stay valid and see every later write.
    - **Transactions that cost what they touch.** moto's backup is a deep copy of every table a
      transaction names, taken before each one, whole stream history included (about 0.1 ms a
      stream record: 150 ms a claim after a 200-task burst, every claim and renewal, all of it
      under the lock above). Here the backup is the items the transaction names and each stream's
      length, and a cancelled transaction is undone in place: the same tables and shards, with the
      items and records they had before (``_TransactionUndo``).
    - **Index key types.** DynamoDB refuses a write whose secondary-index key attribute has the
      wrong type (or is an empty string); moto checks only the table's own key on ``PutItem``.
      Puts (``PutItem``, ``BatchWriteItem``, ``TransactWriteItems``) are checked against the table's
      ``AttributeDefinitions`` here, with DynamoDB's ``ValidationException``. (``UpdateItem`` is
      already checked by moto.)
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if not target.startswith("DynamoDB"):  # DynamoDB_20120810.* and DynamoDBStreams_20120810.*
            return self.app(environ, start_response)
        operation = target.rpartition(".")[2]
        with self._lock:
            body = _read_body(environ) if operation in _WRITE_OPERATIONS else {}
            if operation in _PUT_OPERATIONS:
                refusal = _index_key_refusal(operation, body, _region(environ))
                if refusal:
                    return _validation_error(refusal, start_response)
            try:
                if operation != "TransactWriteItems":
                    return list(self.app(environ, start_response))
                return self._transaction(environ, start_response, body)
            finally:
                if body:
                    TABLE_WRITES.note(_written_tables(operation, body))

    def _transaction(
        self, environ: dict[str, Any], start_response: Callable[..., Any], body: dict[str, Any]
    ) -> Iterable[bytes]:
        """``TransactWriteItems``, undone in place when moto refuses it (under the lock)."""
        shards = _stream_shards()
        region = _region(environ)
        undo = _TransactionUndo(_tables(region), body)
        status: list[str] = []

        def noting_status(code: str, headers: Any, *exc_info: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *exc_info)

        try:
            _table_copies.skip = True
            try:
                out = list(self.app(environ, noting_status))
            finally:
                _table_copies.skip = False
            if not status or not status[-1].startswith("200"):
                undo.restore(_tables(region))
            return out
        except BaseException:
            undo.restore(_tables(region))
            raise
        finally:
            _keep_stream_shards(shards)


_PUT_OPERATIONS = frozenset({"PutItem", "BatchWriteItem", "TransactWriteItems"})
_WRITE_OPERATIONS = _PUT_OPERATIONS | {"UpdateItem", "DeleteItem"}


def _written_tables(operation: str, body: dict[str, Any]) -> set[str]:
    """The tables a write request names."""
    if operation == "BatchWriteItem":
        return {str(t) for t in body.get("RequestItems") or {}}
    if operation == "TransactWriteItems":
        found = set()
        for entry in body.get("TransactItems") or []:
            for part in entry.values() if isinstance(entry, dict) else ():
                if isinstance(part, dict) and part.get("TableName"):
                    found.add(str(part["TableName"]))
        return found
    return {str(body["TableName"])} if body.get("TableName") else set()


def _read_body(environ: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON body; the stream is put back for the app to read."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(size) if size else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    try:
        parsed = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _region(environ: dict[str, Any]) -> str:
    """The region a SigV4-signed request names in its credential scope."""
    match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", str(environ.get("HTTP_AUTHORIZATION", "")))
    return match.group(1) if match else "us-east-1"


def _tables(region: str) -> dict[str, Any]:
    """Every moto table of ``region``, by name, across the accounts the server holds."""
    found: dict[str, Any] = {}
    for regions in list(dynamodb_backends.values()):
        backend = dict.get(regions, region)
        if backend is not None:
            found.update(backend.tables)
    return found


def _puts(operation: str, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table name, item) of every put the request makes."""
    if operation == "PutItem":
        yield str(body.get("TableName", "")), body.get("Item") or {}
    elif operation == "BatchWriteItem":
        for table, requests in (body.get("RequestItems") or {}).items():
            for request in requests or []:
                if isinstance(request, dict) and "PutRequest" in request:
                    yield table, (request["PutRequest"] or {}).get("Item") or {}
    else:
        for part in body.get("TransactItems") or []:
            put = part.get("Put") if isinstance(part, dict) else None
            if isinstance(put, dict):
                yield str(put.get("TableName", "")), put.get("Item") or {}


def _index_key_refusal(operation: str, body: dict[str, Any], region: str) -> str | None:
    """DynamoDB's message for the first put whose index key attribute it would refuse, else None."""
    tables = _tables(region)
    for name, item in _puts(operation, body):
        table = tables.get(name)
        if table is None or not isinstance(item, dict):
            continue
        types = {a["AttributeName"]: a["AttributeType"] for a in table.attr}
        for index in [*table.global_indexes, *table.indexes]:
            for key in index.schema:
                attr = key["AttributeName"]
                value = item.get(attr)
                if not isinstance(value, dict) or not value:
                    continue  # an item without the index key is simply not in the index
                actual = next(iter(value))
                expected = types.get(attr)
                if expected and actual != expected:
                    return (
                        "One or more parameter values were invalid: Type mismatch for Index Key "
                        f"{attr} Expected: {expected} Actual: {actual} IndexName: {index.name}"
                    )
                if actual in ("S", "B") and value[actual] == "":
                    return (
                        "One or more parameter values are not valid. A value specified for a secondary "
                        "index key is not supported. The AttributeValue for a key attribute cannot "
                        f"contain an empty string value. IndexName: {index.name}, IndexKey: {attr}"
                    )
    return None


def _validation_error(message: str, start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ValidationException", "message": message})
    start_response(
        "400 Bad Request",
        [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(body)))],
    )
    return [body.encode()]


def _stream_shards() -> list[tuple[Any, str, Any, Any]]:
    """(backend, table name, table, its stream shard) of every table that has a stream."""
    shards = []
    for regions in list(dynamodb_backends.values()):
        for backend in list(dict.values(regions)):
            for name, table in list(backend.tables.items()):
                if getattr(table, "stream_shard", None) is not None:
                    shards.append((backend, name, table, table.stream_shard))
    return shards


def _keep_stream_shards(before: list[tuple[Any, str, Any, Any]]) -> None:
    """Where a rollback replaced a table by its copy, move the original shard object into the copy."""
    for backend, name, table, shard in before:
        restored = backend.tables.get(name)
        if restored is None or restored is table or restored.stream_shard is shard:
            continue
        restored_shard = restored.stream_shard
        if restored_shard is None:
            continue
        shard.items = restored_shard.items  # the records as they were before the transaction
        shard.table = restored
        restored.stream_shard = shard


class _TableCopies(threading.local):
    skip = False  # true while this thread runs a TransactWriteItems that _TransactionUndo backs up


_table_copies = _TableCopies()


class _CopyModule:
    """What moto's DynamoDB models module calls ``copy``: the real module, except that while a
    transaction runs here a deep copy of a whole table (moto's backup of it) is the table itself,
    so moto's rollback puts the same table back; ``_TransactionUndo`` has undone its items by then."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if _table_copies.skip and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


# a moto without a module-level ``copy`` there keeps its own backups (slow, and still correct)
if isinstance(getattr(moto_dynamodb, "copy", None), type(copy)):
    setattr(moto_dynamodb, "copy", _CopyModule())  # noqa: B010 - a module attribute, on purpose


class _TransactionUndo:
    """The items a ``TransactWriteItems`` names as they were before it (copies), and the length
    of each stream it may write to: a cancelled one is undone to that, in place."""

    def __init__(self, tables: dict[str, Any], body: dict[str, Any]) -> None:
        self._items: list[tuple[Any, DynamoType, DynamoType | None, Any]] = []
        self._streams: dict[int, tuple[Any, int]] = {}
        for part in body.get("TransactItems") or []:
            if not isinstance(part, dict) or len(part) != 1:
                continue  # moto refuses it before it writes anything
            kind, op = next(iter(part.items()))
            if not isinstance(op, dict):
                continue
            table = tables.get(str(op.get("TableName", "")))
            key = _item_key(table, op.get("Item") if kind == "Put" else op.get("Key"))
            if table is None or key is None:
                continue
            self._items.append((table, *key, copy.deepcopy(table.get_item(*key))))
            shard = table.stream_shard
            if shard is not None:
                self._streams.setdefault(id(shard), (shard, len(shard.items)))

    def restore(self, tables_now: dict[str, Any]) -> None:
        """Put every item back as it was (or remove it, if it did not exist) and drop the stream
        records written since, in tables that are still the live ones."""
        for table, hash_key, range_key, before in reversed(self._items):
            if not _live(table, tables_now):
                continue  # moto put a copy in place after all (a moto this does not know)
            if range_key is None:
                if before is None:
                    table.items.pop(hash_key, None)
                else:
                    table.items[hash_key] = before
            elif before is None:
                table.items.get(hash_key, {}).pop(range_key, None)
            else:
                table.items[hash_key][range_key] = before
        for shard, length in self._streams.values():
            if _live(shard.table, tables_now):
                del shard.items[length:]


def _live(table: Any, tables_now: dict[str, Any]) -> bool:
    return tables_now.get(table.name) is table


def _item_key(table: Any, attrs: Any) -> tuple[DynamoType, DynamoType | None] | None:
    """The table's key of an item or a key, as moto stores it; None when it has none."""
    if not isinstance(table, Table) or not isinstance(attrs, dict):
        return None
    try:
        hash_key = DynamoType(attrs[table.hash_key_attr])
        range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    except Exception:  # a malformed key: moto refuses the transaction itself
        return None
    return hash_key, range_key


# -- cost ----------------------------------------------------------------------------------------
# moto answers a DynamoDB read by walking botocore's output shape member by member: every attribute
# of every item is an ``AttributeValue`` structure of ten members, each looked up under several
# aliases. That walk is most of a GetItem's time (~2 ms of ~3 ms for a task row) and of a stream
# read's, under the twin's lock. An attribute value moto holds is already in DynamoDB's JSON form
# ({"S": "..."}, {"M": {...}}), so one made only of strings, numbers (as strings), booleans,
# nulls, lists, maps and string sets is put in the response as it is: the same JSON the walk makes
# (tests/integration/test_dynamodb_twin.py compares the two). Anything else (binary values) takes
# moto's own walk.
_SCALARS: dict[str, type] = {"S": str, "N": str, "BOOL": bool, "NULL": bool}


def _plain_attribute_value(value: Any) -> bool:
    if type(value) is not dict or len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return type(inner) is scalar
    if kind in ("SS", "NS"):
        return type(inner) is list and all(type(v) is str for v in inner)
    if kind == "L":
        return type(inner) is list and all(_plain_attribute_value(v) for v in inner)
    if kind == "M":
        return type(inner) is dict and all(
            type(k) is str and _plain_attribute_value(v) for k, v in inner.items()
        )
    return False


class _DynamoDBSerializer(JSONSerializer):
    """moto's JSON serializer, for DynamoDB and its streams: plain attribute values as they are."""

    def _serialize_type_structure(self, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and _plain_attribute_value(value):
            serialized[key] = value
            return
        super()._serialize_type_structure(serialized, value, shape, key)


def install_fast_attribute_values(on: bool = True) -> None:
    """Serialize DynamoDB's and DynamoDB Streams' answers with ``_DynamoDBSerializer``, through
    moto's own table of per-service serializers (see above); ``on=False`` restores moto's own."""
    for service in ("dynamodb", "dynamodbstreams"):
        if on:
            SERVICE_SPECIFIC_SERIALIZERS.setdefault(service, {})["json"] = _DynamoDBSerializer
        else:
            SERVICE_SPECIFIC_SERIALIZERS.get(service, {}).pop("json", None)


class _Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher with its host-to-service lookup kept: moto matches each request's host
    against every service's URL patterns (~0.3 ms a request, under a lock all requests share), and
    the answer for a host never changes."""

    _KEPT = 512  # hosts are service.region.amazonaws.com names: one per service and region

    def __init__(self, create_app: Callable[..., Any]) -> None:
        super().__init__(create_app)
        self._backends: dict[str, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host is None:
            return None
        try:
            return self._backends[host]
        except KeyError:
            backend = super().get_backend_for_host(host)
            if len(self._backends) < self._KEPT:
                self._backends[host] = backend
            return backend


class _AtomicMotoServer(ThreadedMotoServer):
    """moto's threaded server behind the DynamoDB twin middleware."""

    def _server_entry(self) -> None:
        install_fast_attribute_values()
        app = DynamoDBTwin(_Dispatcher(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoServer:
    """A moto server bound to 127.0.0.1; ``port=0`` picks a free port."""

    def __init__(self, port: int = 0) -> None:
        self._server = _AtomicMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        ensure_local_credentials()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        _SERVED_HERE.add(self.endpoint_url)
        return self.endpoint_url

    def stop(self) -> None:
        _SERVED_HERE.discard(self.endpoint_url)
        self._server.stop()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
