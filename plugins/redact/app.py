"""Masks the JSON fields named in the ``fields`` setting (comma-separated, at any depth)
with the ``mask`` setting (default ``***``). A record whose value is not JSON is
reported as failed."""

import sluice_sdk as sluice


class Redact(sluice.Transform):
    def __init__(self, config: sluice.Config):
        self.fields = {f.strip() for f in config.require("fields").split(",") if f.strip()}
        if not self.fields:
            raise sluice.Error("plugin setting `fields` names no field; example: fields = \"price,owner\"")
        self.mask = config.get("mask", "***")

    def process(self, record: sluice.Record, out: sluice.Output) -> None:
        out.set_json(self.redact(record.json()))

    def redact(self, value):
        if isinstance(value, dict):
            return {k: self.mask if k in self.fields else self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value


# The component's entry point.
Transform = sluice.export(Redact)
