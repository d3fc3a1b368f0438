"""The pass-through in Python, for the language benchmark: every record kept."""

import sluice_sdk as sluice


class Passthrough(sluice.Transform):
    def process(self, record: sluice.Record, out: sluice.Output) -> None:
        out.keep()


Transform = sluice.export(Passthrough)
