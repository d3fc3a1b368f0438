"""Passes a record only when its value differs from the last value of the same key in
its partition: repeated readings (a price that did not move, a status sent again) are
dropped. The last value of each key is keyed state in the host, so it survives
restarts, rebalances and hot swaps. Records without a key always pass. With the
``max_repeats`` setting (default 0), up to that many repeats in a row pass too."""

import sluice_sdk as sluice


class Dedupe(sluice.Transform):
    def __init__(self, config: sluice.Config):
        self.max_repeats = int(config.get("max_repeats", "0"))
        if self.max_repeats < 0:
            raise sluice.Error("plugin setting `max_repeats` must be 0 or more")

    def process(self, record: sluice.Record, out: sluice.Output) -> None:
        if record.key is None:
            out.keep()
            return
        last = sluice.State.of(record)
        seen = last.get_json(record.key)
        value = (record.value or b"").hex()
        repeats = seen["repeats"] + 1 if seen and seen["value"] == value else 0
        last.set_json(record.key, {"value": value, "repeats": repeats})
        if repeats <= self.max_repeats:
            out.keep()


# The component's entry point.
Transform = sluice.export(Dedupe)
