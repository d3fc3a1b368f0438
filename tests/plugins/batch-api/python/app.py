"""A test plugin on the Python SDK's batch API, the twin of tests/plugins/batch-api/js:
``mode = "all"`` forwards every record with one ``out.keep_all()``; ``mode = "mixed"``
answers each record by index from its value's first word (``plain`` or anything else
kept, ``upper`` upper-cased, ``route`` kept to the ``side`` output, ``split`` two new
records, ``bad`` failed, ``drop`` and tombstones dropped)."""

import sluice_sdk as sluice


class KeepAll(sluice.Transform):
    def process_batch(self, batch: sluice.Batch, out: sluice.BatchOutput) -> None:
        out.keep_all()


class Mixed(sluice.Transform):
    def process_batch(self, batch: sluice.Batch, out: sluice.BatchOutput) -> None:
        for i in range(len(batch)):
            value = batch.value(i)
            if value is None:
                continue
            # Not strict: a binary value is kept like any other.
            word = value.decode("utf-8", "replace").split(" ")[0]
            if word == "drop":
                continue
            if word == "upper":
                out.set_value(i, batch.value_text(i).upper())
            elif word == "route":
                out.keep(i, "side")
            elif word == "split":
                out.emit(i, key=batch.key(i), value="a", headers=[sluice.Header("part", "1")])
                out.emit(i, key=None, value="b", headers=batch.headers(i), output="side")
            elif word == "bad":
                out.fail(i, f"record at offset {batch.offset(i)} is bad")
            else:
                out.keep(i)


def batch_api(config: sluice.Config) -> sluice.Transform:
    return KeepAll(config) if config.require("mode") == "all" else Mixed(config)


Transform = sluice.export(batch_api)
