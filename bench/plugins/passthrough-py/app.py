"""The pass-through in Python, for the language benchmark: every record kept. The
``mode`` setting picks the API: ``record`` (the default) calls ``out.keep()`` per
record, ``index`` answers the batch with ``out.keep(i)`` per record, ``all`` with one
``out.keep_all()``."""

import sluice_sdk as sluice


class PerRecord(sluice.Transform):
    def process(self, record: sluice.Record, out: sluice.Output) -> None:
        out.keep()


class ByIndex(sluice.Transform):
    def process_batch(self, batch: sluice.Batch, out: sluice.BatchOutput) -> None:
        for i in range(len(batch)):
            out.keep(i)


class KeepAll(sluice.Transform):
    def process_batch(self, batch: sluice.Batch, out: sluice.BatchOutput) -> None:
        out.keep_all()


MODES = {"record": PerRecord, "index": ByIndex, "all": KeepAll}


def passthrough(config: sluice.Config) -> sluice.Transform:
    mode = config.get("mode") or "record"
    if mode not in MODES:
        raise sluice.Error(f'mode = "{mode}" is not one of record, index, all')
    return MODES[mode](config)


Transform = sluice.export(passthrough)
