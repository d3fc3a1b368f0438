"""Sluice SDK for Python: write a record transform as a class, export it with
``export``, and build it with ``sluice plugin build``.

The host calls the plugin once per batch with the batch encoded as one byte buffer
(``wit/README.md``); this module reads records from it lazily and writes the output
batch. Outputs refer to input records by index, so forwarding a record with
``out.keep()`` copies nothing::

    import sluice_sdk as sluice

    class DropTombstones(sluice.Transform):
        def __init__(self, config: sluice.Config):
            pass

        def process(self, record: sluice.Record, out: sluice.Output) -> None:
            if record.value is not None:
                out.keep()

    # The component's entry point: componentize-py looks for `Transform` in app.py.
    Transform = sluice.export(DropTombstones)

A plugin that answers a whole batch at once defines ``process_batch(batch, out)``
instead: it reads records by index and answers by index, so forwarding needs no object
per record (``out.keep_all()`` forwards the batch in one call)::

    class DropTombstones(sluice.Transform):
        def process_batch(self, batch: sluice.Batch, out: sluice.BatchOutput) -> None:
            for i in range(len(batch)):
                if batch.value(i) is not None:
                    out.keep(i)
"""

import json as _json
import struct
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

SDK_NAME = "sluice-sdk-python"
SDK_VERSION = "0.1.0"

_VERSION = 1
_OP_KEEP = 1
_OP_KEEP_RANGE = 2
_OP_REPLACE_VALUE = 3
_OP_RECORD = 4
_OP_ERROR = 5
_OP_ROUTED = 0x80

_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_KEEP = struct.Struct("<BI")
_KEEP_RANGE = struct.Struct("<BII")

Bytes = Union[bytes, bytearray, memoryview, str, None]

# The host's interfaces. componentize-py builds into the component the bindings that
# are imported while it builds (not those first imported when a record comes), so they
# are imported here; outside a component (a type checker, a test of the SDK's own
# code) they are absent.
try:
    from wit_world.imports import log as _wit_log
    from wit_world.imports import state as _wit_state
except ImportError:
    _wit_log = None
    _wit_state = None


class Error(Exception):
    """A plugin's failure to handle one record (or to start). Any exception works the
    same way; this one just says so."""


def _to_bytes(value: Bytes) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError("a key, value or header value must be bytes, str or None")


class Config:
    """The plugin's settings, from ``[plugin.config]`` of the host configuration."""

    def __init__(self, pairs: List[Tuple[str, str]]):
        self._pairs = list(pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key``, or ``default``."""
        for k, v in self._pairs:
            if k == key:
                return v
        return default

    def require(self, key: str) -> str:
        """The value of ``key``, or an error naming the missing key."""
        value = self.get(key)
        if value is None:
            raise Error(f"missing plugin setting `{key}`")
        return value

    def number(self, key: str, default: Optional[float] = None) -> Optional[float]:
        """The value of ``key`` as a number, ``default`` when unset."""
        value = self.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise Error(f'plugin setting `{key}` = "{value}" is not a number') from None

    def items(self) -> List[Tuple[str, str]]:
        """All settings in the order the host gave them."""
        return list(self._pairs)


class Header:
    """One record header: a name and a value (bytes, or None for a null value)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Bytes):
        self.name = name
        self.value = _to_bytes(value)

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r})"


class Record:
    """One input record. Each field is decoded from the batch when it is read, so a
    plugin pays only for the fields it uses."""

    __slots__ = ("index", "_batch", "_at")

    def __init__(self, batch: "_InputBatch", index: int, at: int):
        self.index = index
        self._batch = batch
        self._at = at

    @property
    def topic(self) -> str:
        """The topic the record was read from."""
        return self._batch.topic_at(self._at)

    @property
    def partition(self) -> int:
        """The partition the record was read from."""
        return _I32.unpack_from(self._batch.buf, self._at + 2)[0]

    @property
    def offset(self) -> int:
        """The record's offset in its partition."""
        return _I64.unpack_from(self._batch.buf, self._at + 6)[0]

    @property
    def timestamp(self) -> Optional[int]:
        """Milliseconds since the Unix epoch, or None."""
        return self._batch.timestamp_at(self._at)

    @property
    def key(self) -> Optional[bytes]:
        """The key, or None for a null key."""
        return self._batch.bytes_at(self._at + _KEY_AT)

    @property
    def value(self) -> Optional[bytes]:
        """The value, or None for a null value (a tombstone)."""
        return self._batch.value_at(self._at)

    @property
    def headers(self) -> List[Header]:
        """The headers in order, duplicates included."""
        return self._batch.headers_at(self._at)

    def header(self, name: str) -> Optional[bytes]:
        """The value of the first header named ``name``; None when absent or null."""
        for header in self.headers:
            if header.name == name:
                return header.value
        return None

    def value_text(self) -> Optional[str]:
        """The value as UTF-8 text, or None."""
        value = self.value
        return None if value is None else value.decode("utf-8")

    def key_text(self) -> Optional[str]:
        """The key as UTF-8 text, or None."""
        key = self.key
        return None if key is None else key.decode("utf-8")

    def json(self) -> Any:
        """The value parsed as JSON; raises (failing this record) when null or not JSON."""
        return self._batch.json_at(self._at)


# A record's fields from its position: u16 topic, i32 partition, i64 offset, i64
# timestamp, then the key, the value and the headers.
_KEY_AT = 22


class _InputBatch:
    def __init__(self, buf: bytes):
        # Slices of ``bytes`` are ``bytes`` (one copy, with ``decode``), not views.
        self.buf = buf = buf if isinstance(buf, bytes) else bytes(buf)
        version, _flags, self.count, topics_at, self.index_at = struct.unpack_from("<HHIII", buf, 0)
        if version != _VERSION:
            raise Error(f"input batch version {version} is not supported by {SDK_NAME} {SDK_VERSION}")
        (topic_count,) = _U16.unpack_from(buf, topics_at)
        at = topics_at + 2
        self.topics = []
        for _ in range(topic_count):
            (length,) = _U16.unpack_from(buf, at)
            self.topics.append(buf[at + 2:at + 2 + length].decode("utf-8"))
            at += 2 + length

    def position(self, index: int) -> int:
        return _U32.unpack_from(self.buf, self.index_at + 4 * index)[0]

    def record(self, index: int) -> Record:
        return Record(self, index, _U32.unpack_from(self.buf, self.index_at + 4 * index)[0])

    def topic_at(self, at: int) -> str:
        return self.topics[_U16.unpack_from(self.buf, at)[0]]

    def timestamp_at(self, at: int) -> Optional[int]:
        (timestamp,) = _I64.unpack_from(self.buf, at + 14)
        return timestamp if timestamp >= 0 else None

    def after(self, at: int) -> int:
        """The position after the nullable bytes at ``at``."""
        (length,) = _I32.unpack_from(self.buf, at)
        return at + 4 if length < 0 else at + 4 + length

    def bytes_at(self, at: int) -> Optional[bytes]:
        """The nullable bytes at ``at`` (a copy: slicing ``bytes`` copies once)."""
        (length,) = _I32.unpack_from(self.buf, at)
        if length < 0:
            return None
        return self.buf[at + 4:at + 4 + length]

    def value_at(self, at: int) -> Optional[bytes]:
        return self.bytes_at(self.after(at + _KEY_AT))

    def headers_at(self, at: int) -> List[Header]:
        buf = self.buf
        at = self.after(self.after(at + _KEY_AT))
        (count,) = _U16.unpack_from(buf, at)
        at += 2
        headers = []
        for _ in range(count):
            (length,) = _U16.unpack_from(buf, at)
            name = buf[at + 2:at + 2 + length].decode("utf-8")
            at += 2 + length
            headers.append(Header(name, self.bytes_at(at)))
            at = self.after(at)
        return headers

    def json_at(self, at: int) -> Any:
        value = self.value_at(at)
        if value is None:
            offset = _I64.unpack_from(self.buf, at + 6)[0]
            raise Error(f"record at offset {offset} has no value; expected JSON")
        try:
            return _json.loads(value)
        except ValueError as error:
            offset = _I64.unpack_from(self.buf, at + 6)[0]
            raise Error(f"record at offset {offset} is not JSON: {error}") from None


class _OutputWriter:
    __slots__ = ("parts", "ops", "pending_start", "pending_count")

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.ops = 0
        # An unrouted keep range not yet written; count 0: none.
        self.pending_start = 0
        self.pending_count = 0

    def _flush(self) -> None:
        count = self.pending_count
        if count == 0:
            return
        self.pending_count = 0
        self.ops += 1
        if count == 1:
            self.parts.append(_KEEP.pack(_OP_KEEP, self.pending_start))
        else:
            self.parts.append(_KEEP_RANGE.pack(_OP_KEEP_RANGE, self.pending_start, count))

    def _op(self, code: int, output: Optional[str]) -> None:
        self._flush()
        self.ops += 1
        if output is None:
            self.parts.append(bytes((code,)))
        else:
            self.parts.append(bytes((code | _OP_ROUTED,)))
            self._short_text(output)

    def _short_text(self, text: str) -> None:
        data = text.encode("utf-8")
        if len(data) > 0xFFFF:
            raise Error("an output or header name is longer than 65535 bytes")
        self.parts.append(_U16.pack(len(data)))
        self.parts.append(data)

    def _nullable(self, value: Bytes) -> None:
        data = _to_bytes(value)
        if data is None:
            self.parts.append(_I32.pack(-1))
        else:
            self.parts.append(_I32.pack(len(data)))
            self.parts.append(data)

    def keep(self, index: int, output: Optional[str]) -> None:
        if output is not None:
            self._op(_OP_KEEP, output)
            self.parts.append(_U32.pack(index))
        elif self.pending_count and self.pending_start + self.pending_count == index:
            self.pending_count += 1
        else:
            self._flush()
            self.pending_start = index
            self.pending_count = 1

    def keep_range(self, start: int, count: int) -> None:
        if self.pending_count and self.pending_start + self.pending_count == start:
            self.pending_count += count
        else:
            self._flush()
            self.pending_start = start
            self.pending_count = count

    def replace_value(self, index: int, value: Bytes, output: Optional[str]) -> None:
        self._op(_OP_REPLACE_VALUE, output)
        self.parts.append(_U32.pack(index))
        self._nullable(value)

    def record(self, index: int, key: Bytes, value: Bytes, headers: List[Header],
               timestamp: Optional[int], output: Optional[str]) -> None:
        self._op(_OP_RECORD, output)
        self.parts.append(struct.pack("<Iq", index, -1 if timestamp is None else timestamp))
        self._nullable(key)
        self._nullable(value)
        self.parts.append(_U16.pack(len(headers)))
        for header in headers:
            self._short_text(header.name)
            self._nullable(header.value)

    def error(self, index: int, message: str) -> None:
        self._op(_OP_ERROR, None)
        data = message.encode("utf-8")
        self.parts.append(struct.pack("<II", index, len(data)))
        self.parts.append(data)

    def rollback(self, parts: int, ops: int, pending_start: int, pending_count: int) -> None:
        del self.parts[parts:]
        self.ops = ops
        self.pending_start = pending_start
        self.pending_count = pending_count

    def finish(self) -> bytes:
        self._flush()
        return struct.pack("<HHI", _VERSION, 0, self.ops) + b"".join(self.parts)


class Output:
    """Where ``process`` puts the outputs of the record it is handling."""

    __slots__ = ("_writer", "_record")

    def __init__(self, writer: _OutputWriter, record: Optional[Record]):
        self._writer = writer
        self._record = record

    def keep(self, output: Optional[str] = None) -> None:
        """Forwards the record unchanged, to the default output or the named one."""
        self._writer.keep(self._record.index, output)

    def keep_to(self, output: str) -> None:
        """Forwards the record unchanged to the named output."""
        self._writer.keep(self._record.index, output)

    def set_value(self, value: Bytes, output: Optional[str] = None) -> None:
        """Forwards the record with a new value (key, headers and timestamp kept)."""
        self._writer.replace_value(self._record.index, value, output)

    def set_json(self, value: Any, output: Optional[str] = None) -> None:
        """Forwards the record with ``value`` serialized as compact JSON."""
        self._writer.replace_value(self._record.index, _json_text(value), output)

    def emit(self, key: Bytes = None, value: Bytes = None, headers: Optional[List[Header]] = None,
             timestamp: Optional[int] = None, output: Optional[str] = None) -> None:
        """Emits a new record; without a timestamp it takes the input's."""
        if timestamp is None:
            timestamp = self._record.timestamp
        self._writer.record(self._record.index, key, value, headers or [], timestamp, output)


def _json_text(value: Any) -> str:
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Batch:
    """A whole input batch, for ``process_batch``: records are read by index, lazily,
    without an object per record unless asked for one (``batch[i]`` or iterating)::

        def process_batch(self, batch: sluice.Batch, out: sluice.BatchOutput) -> None:
            for i in range(len(batch)):
                if batch.value(i) is not None:
                    out.keep(i)
    """

    __slots__ = ("_input", "_count")

    def __init__(self, input: _InputBatch):
        self._input = input
        self._count = input.count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Record:
        """Record ``index`` as a ``Record`` (the object the per-record API passes)."""
        self._check(index)
        return self._input.record(index)

    def __iter__(self) -> Iterator[Record]:
        record = self._input.record
        return (record(i) for i in range(self._count))

    def record(self, index: int) -> Record:
        """Record ``index`` as a ``Record``."""
        return self[index]

    def key(self, index: int) -> Optional[bytes]:
        """The key of record ``index``, or None."""
        return self._input.bytes_at(self._at(index) + _KEY_AT)

    def value(self, index: int) -> Optional[bytes]:
        """The value of record ``index``, or None."""
        return self._input.value_at(self._at(index))

    def key_text(self, index: int) -> Optional[str]:
        """The key of record ``index`` as UTF-8 text, or None."""
        key = self.key(index)
        return None if key is None else key.decode("utf-8")

    def value_text(self, index: int) -> Optional[str]:
        """The value of record ``index`` as UTF-8 text, or None."""
        value = self.value(index)
        return None if value is None else value.decode("utf-8")

    def json(self, index: int) -> Any:
        """The value of record ``index`` parsed as JSON; raises when null or not JSON."""
        return self._input.json_at(self._at(index))

    def headers(self, index: int) -> List[Header]:
        """The headers of record ``index`` in order."""
        return self._input.headers_at(self._at(index))

    def topic(self, index: int) -> str:
        """The topic of record ``index``."""
        return self._input.topic_at(self._at(index))

    def partition(self, index: int) -> int:
        """The partition of record ``index``."""
        return _I32.unpack_from(self._input.buf, self._at(index) + 2)[0]

    def offset(self, index: int) -> int:
        """The offset of record ``index``."""
        return _I64.unpack_from(self._input.buf, self._at(index) + 6)[0]

    def timestamp(self, index: int) -> Optional[int]:
        """The timestamp of record ``index`` in milliseconds, or None."""
        return self._input.timestamp_at(self._at(index))

    def _at(self, index: int) -> int:
        self._check(index)
        return self._input.position(index)

    def _check(self, index: int) -> None:
        if not 0 <= index < self._count:
            raise IndexError(f"record index {index} is outside the batch of {self._count} records")


class BatchOutput:
    """Where ``process_batch`` puts the outputs of the whole batch. Every output names
    the input record it comes from by index; outputs are written in the order of the
    calls, so a plugin that answers its records in input order keeps each partition's
    order. Consecutive ``keep``s of consecutive records become one range: forwarding
    most of a batch costs little per record, and ``keep_all()`` is one call."""

    __slots__ = ("_writer", "_batch")

    def __init__(self, writer: _OutputWriter, batch: Batch):
        self._writer = writer
        self._batch = batch

    def keep_all(self) -> None:
        """Forwards every record of the batch unchanged, in order, to the default output."""
        count = len(self._batch)
        if count:
            self._writer.keep_range(0, count)

    def keep_range(self, start: int, count: int) -> None:
        """Forwards records ``start`` to ``start + count - 1`` unchanged, in order."""
        if count == 0:
            return
        self._batch._check(start)
        self._batch._check(start + count - 1)
        self._writer.keep_range(start, count)

    def keep(self, index: int, output: Optional[str] = None) -> None:
        """Forwards record ``index`` unchanged, to the default output or the named one."""
        self._batch._check(index)
        self._writer.keep(index, output)

    def set_value(self, index: int, value: Bytes, output: Optional[str] = None) -> None:
        """Forwards record ``index`` with a new value (key, headers and timestamp kept)."""
        self._batch._check(index)
        self._writer.replace_value(index, value, output)

    def set_json(self, index: int, value: Any, output: Optional[str] = None) -> None:
        """Forwards record ``index`` with ``value`` serialized as compact JSON."""
        self._batch._check(index)
        self._writer.replace_value(index, _json_text(value), output)

    def emit(self, index: int, key: Bytes = None, value: Bytes = None,
             headers: Optional[List[Header]] = None, timestamp: Optional[int] = None,
             output: Optional[str] = None) -> None:
        """Emits a new record derived from record ``index``; without a timestamp it
        takes the input's."""
        if timestamp is None:
            timestamp = self._batch.timestamp(index)
        self._writer.record(index, key, value, headers or [], timestamp, output)

    def fail(self, index: int, message: Any) -> None:
        """Reports that record ``index`` could not be transformed: it goes to the
        dead-letter topic, or stops the pipeline."""
        self._batch._check(index)
        self._writer.error(index, str(message) or type(message).__name__)


class Transform:
    """Base class of a plugin: ``__init__(config)`` (raise to reject the settings) and
    one of:

    - ``process(record, out)``, called once per record: call ``out`` zero, one or many
      times, or raise to report this record alone as failed (its outputs and state
      writes, if any, are discarded);
    - ``process_batch(batch, out)``, called once per batch with a ``Batch`` and a
      ``BatchOutput``: answer every record by index (``out.keep(i)``,
      ``out.keep_all()``, ``out.fail(i, message)``, ...). Raising fails the whole
      batch; the host then runs it again one record at a time, so that only the
      records that fail alone are reported. A plugin with both is called through
      ``process_batch``.
    """

    def __init__(self, config: Config):
        pass

    def process(self, record: Record, out: Output) -> None:
        raise NotImplementedError("a Sluice plugin implements process(record, out) or process_batch(batch, out)")


def _log(level: str, message: str) -> None:
    _wit_log.write(getattr(_wit_log.Level, level), str(message))


class log:
    """Lines in the host's log, tagged with the plugin's name."""

    @staticmethod
    def debug(message: str) -> None:
        _log("DEBUG", message)

    @staticmethod
    def info(message: str) -> None:
        _log("INFO", message)

    @staticmethod
    def warn(message: str) -> None:
        _log("WARN", message)

    @staticmethod
    def error(message: str) -> None:
        _log("ERROR", message)


def _state_bytes(value: Bytes, what: str) -> bytes:
    if value is None:
        raise TypeError(f"a state {what} is bytes or str, not None")
    return _to_bytes(value)  # type: ignore[return-value]


class State:
    """The keyed state of the partition a record came from: byte values under byte keys
    (``str`` is stored as UTF-8), kept by the host. The host checkpoints it with the
    partition's offsets, restores it after a restart or a rebalance and keeps it across
    hot swaps, so a plugin keeps nothing of value in its own memory. Records that share
    state must share a partition: key the input by what the state is keyed by.

        seen = sluice.State.of(record)
        count = int(seen.get_text("count") or "0") + 1
        seen.set("count", str(count))
    """

    __slots__ = ("_index",)

    def __init__(self, record: Record):
        self._index = record.index

    @staticmethod
    def of(record: Record) -> "State":
        """The state of ``record``'s input partition."""
        return State(record)

    def get(self, key: Bytes) -> Optional[bytes]:
        """The value under ``key``, or None."""
        return _wit_state.get(self._index, _state_bytes(key, "key"))

    def get_text(self, key: Bytes) -> Optional[str]:
        """The value under ``key`` as text, or None."""
        value = self.get(key)
        return None if value is None else value.decode("utf-8")

    def get_json(self, key: Bytes) -> Any:
        """The value under ``key`` parsed as JSON, or None."""
        text = self.get_text(key)
        return None if text is None else _json.loads(text)

    def set(self, key: Bytes, value: Bytes) -> None:
        """Stores ``value`` under ``key``."""
        _wit_state.set(self._index, _state_bytes(key, "key"), _state_bytes(value, "value"))

    def set_json(self, key: Bytes, value: Any) -> None:
        """Stores ``value`` as JSON under ``key``."""
        self.set(key, _json.dumps(value, separators=(",", ":")))

    def delete(self, key: Bytes) -> None:
        """Removes ``key``; nothing happens when it is absent."""
        _wit_state.delete(self._index, _state_bytes(key, "key"))


def _fail(message: str) -> Exception:
    from componentize_py_types import Err  # only present inside a component
    return Err(message)


def export(plugin_class: type) -> type:
    """Makes the component's entry point from a plugin class. Bind the result to the
    name ``Transform`` in ``app.py``: ``Transform = sluice.export(MyPlugin)``."""

    state: Dict[str, Any] = {}

    class _Export:
        def init(self, config: List[Tuple[str, str]]) -> None:
            try:
                plugin = plugin_class(Config(config))
            except Exception as error:  # any failure rejects the settings, with its message
                raise _fail(str(error) or type(error).__name__) from None
            state["plugin"] = plugin
            state["batch"] = callable(getattr(plugin, "process_batch", None))

        def process(self, input: bytes) -> bytes:
            plugin = state.get("plugin")
            if plugin is None:
                raise _fail("process was called before init")
            try:
                batch = _InputBatch(input)
            except Exception as error:
                raise _fail(f"malformed input batch: {error}") from None
            writer = _OutputWriter()
            if state["batch"]:
                view = Batch(batch)
                try:
                    plugin.process_batch(view, BatchOutput(writer, view))
                except Exception as error:
                    raise _fail(str(error) or type(error).__name__) from None
                return writer.finish()
            process = plugin.process
            record_at = batch.record
            # One Output for the batch, pointed at each record in turn.
            out = Output(writer, None)
            parts = writer.parts
            for index in range(batch.count):
                record = record_at(index)
                out._record = record
                # Where to roll back to if the record fails: plain ints, no allocation.
                mark = len(parts)
                ops = writer.ops
                pending_start = writer.pending_start
                pending_count = writer.pending_count
                try:
                    process(record, out)
                except Exception as error:
                    writer.rollback(mark, ops, pending_start, pending_count)
                    writer.error(index, str(error) or type(error).__name__)
            return writer.finish()

    _Export.__name__ = "Transform"
    return _Export
