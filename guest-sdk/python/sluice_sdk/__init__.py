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
"""

import json as _json
import struct
from typing import Any, Dict, List, Optional, Tuple, Union

SDK_NAME = "sluice-sdk-python"
SDK_VERSION = "0.1.0"

_VERSION = 1
_OP_KEEP = 1
_OP_KEEP_RANGE = 2
_OP_REPLACE_VALUE = 3
_OP_RECORD = 4
_OP_ERROR = 5
_OP_ROUTED = 0x80

_RECORD_HEAD = struct.Struct("<Hiqq")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

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
    """One input record. Fields are decoded from the batch when first read."""

    __slots__ = ("index", "_batch", "_at", "_decoded", "_topic", "_partition", "_offset",
                 "_timestamp", "_key", "_value", "_headers_at")

    def __init__(self, batch: "_InputBatch", index: int, at: int):
        self.index = index
        self._batch = batch
        self._at = at
        self._decoded = False

    def _decode(self) -> None:
        buf = self._batch.buf
        topic, self._partition, self._offset, timestamp = _RECORD_HEAD.unpack_from(buf, self._at)
        self._topic = self._batch.topics[topic]
        self._timestamp = timestamp if timestamp >= 0 else None
        self._key, at = self._batch.nullable(self._at + _RECORD_HEAD.size)
        self._value, self._headers_at = self._batch.nullable(at)
        self._decoded = True

    @property
    def topic(self) -> str:
        """The topic the record was read from."""
        if not self._decoded:
            self._decode()
        return self._topic

    @property
    def partition(self) -> int:
        """The partition the record was read from."""
        if not self._decoded:
            self._decode()
        return self._partition

    @property
    def offset(self) -> int:
        """The record's offset in its partition."""
        if not self._decoded:
            self._decode()
        return self._offset

    @property
    def timestamp(self) -> Optional[int]:
        """Milliseconds since the Unix epoch, or None."""
        if not self._decoded:
            self._decode()
        return self._timestamp

    @property
    def key(self) -> Optional[bytes]:
        """The key, or None for a null key."""
        if not self._decoded:
            self._decode()
        return self._key

    @property
    def value(self) -> Optional[bytes]:
        """The value, or None for a null value (a tombstone)."""
        if not self._decoded:
            self._decode()
        return self._value

    @property
    def headers(self) -> List[Header]:
        """The headers in order, duplicates included."""
        if not self._decoded:
            self._decode()
        buf = self._batch.buf
        at = self._headers_at
        (count,) = _U16.unpack_from(buf, at)
        at += 2
        headers = []
        for _ in range(count):
            (length,) = _U16.unpack_from(buf, at)
            name = bytes(buf[at + 2:at + 2 + length]).decode("utf-8")
            value, at = self._batch.nullable(at + 2 + length)
            headers.append(Header(name, value))
        return headers

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
        if self.value is None:
            raise Error(f"record at offset {self.offset} has no value; expected JSON")
        try:
            return _json.loads(self.value)
        except ValueError as error:
            raise Error(f"record at offset {self.offset} is not JSON: {error}") from None


class _InputBatch:
    def __init__(self, buf: bytes):
        self.buf = buf
        version, _flags, self.count, topics_at, self.index_at = struct.unpack_from("<HHIII", buf, 0)
        if version != _VERSION:
            raise Error(f"input batch version {version} is not supported by {SDK_NAME} {SDK_VERSION}")
        (topic_count,) = _U16.unpack_from(buf, topics_at)
        at = topics_at + 2
        self.topics = []
        for _ in range(topic_count):
            (length,) = _U16.unpack_from(buf, at)
            self.topics.append(bytes(buf[at + 2:at + 2 + length]).decode("utf-8"))
            at += 2 + length

    def record(self, index: int) -> Record:
        (at,) = _U32.unpack_from(self.buf, self.index_at + 4 * index)
        return Record(self, index, at)

    def nullable(self, at: int) -> Tuple[Optional[bytes], int]:
        (length,) = _I32.unpack_from(self.buf, at)
        if length < 0:
            return None, at + 4
        return bytes(self.buf[at + 4:at + 4 + length]), at + 4 + length


class _OutputWriter:
    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.ops = 0
        self.pending: Optional[List[int]] = None  # an unrouted keep range: [start, count]

    def _flush(self) -> None:
        if self.pending is None:
            return
        start, count = self.pending
        self.pending = None
        self.ops += 1
        if count == 1:
            self.parts.append(struct.pack("<BI", _OP_KEEP, start))
        else:
            self.parts.append(struct.pack("<BII", _OP_KEEP_RANGE, start, count))

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
        elif self.pending is not None and self.pending[0] + self.pending[1] == index:
            self.pending[1] += 1
        else:
            self._flush()
            self.pending = [index, 1]

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

    def mark(self) -> Tuple[int, int, Optional[List[int]]]:
        return len(self.parts), self.ops, None if self.pending is None else list(self.pending)

    def rollback(self, mark: Tuple[int, int, Optional[List[int]]]) -> None:
        del self.parts[mark[0]:]
        self.ops = mark[1]
        self.pending = mark[2]

    def finish(self) -> bytes:
        self._flush()
        return struct.pack("<HHI", _VERSION, 0, self.ops) + b"".join(self.parts)


class Output:
    """Where ``process`` puts the outputs of the record it is handling."""

    __slots__ = ("_writer", "_record")

    def __init__(self, writer: _OutputWriter, record: Record):
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
        text = _json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self._writer.replace_value(self._record.index, text, output)

    def emit(self, key: Bytes = None, value: Bytes = None, headers: Optional[List[Header]] = None,
             timestamp: Optional[int] = None, output: Optional[str] = None) -> None:
        """Emits a new record; without a timestamp it takes the input's."""
        if timestamp is None:
            timestamp = self._record.timestamp
        self._writer.record(self._record.index, key, value, headers or [], timestamp, output)


class Transform:
    """Base class of a plugin: ``__init__(config)`` (raise to reject the settings) and
    ``process(record, out)``: call ``out`` zero, one or many times, or raise to report
    this record alone as failed (its outputs and state writes, if any, are
    discarded)."""

    def __init__(self, config: Config):
        pass

    def process(self, record: Record, out: Output) -> None:
        raise NotImplementedError("a Sluice plugin implements process(record, out)")


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
                state["plugin"] = plugin_class(Config(config))
            except Exception as error:  # any failure rejects the settings, with its message
                raise _fail(str(error) or type(error).__name__) from None

        def process(self, input: bytes) -> bytes:
            plugin = state.get("plugin")
            if plugin is None:
                raise _fail("process was called before init")
            try:
                batch = _InputBatch(input)
            except Exception as error:
                raise _fail(f"malformed input batch: {error}") from None
            writer = _OutputWriter()
            for index in range(batch.count):
                record = batch.record(index)
                mark = writer.mark()
                try:
                    plugin.process(record, Output(writer, record))
                except Exception as error:
                    writer.rollback(mark)
                    writer.error(index, str(error) or type(error).__name__)
            return writer.finish()

    _Export.__name__ = "Transform"
    return _Export
