"""The PyFlink peer of peers-bench: the original job, a Flink SQL INSERT from a Kafka
source table into a Kafka sink table with the stock record's JSON schema (the tables
of the job Sluice replaces: event_time TIMESTAMP(3), ticker VARCHAR(6), price DOUBLE;
the sink keyed by ticker in JSON), run on PyFlink's local mini-cluster.

Usage: job.py BOOTSTRAP INPUT OUTPUT GROUP CONNECTOR_JAR [CHECKPOINT_MS]
"""

import sys

from pyflink.table import EnvironmentSettings, TableEnvironment

# The stock record's columns in both tables, as the original job declares them.
COLUMNS = "event_time TIMESTAMP(3), ticker VARCHAR(6), price DOUBLE"


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit("usage: job.py BOOTSTRAP INPUT OUTPUT GROUP CONNECTOR_JAR [CHECKPOINT_MS]")
    servers, source, sink, group, jar = sys.argv[1:6]
    checkpoint_ms = int(sys.argv[6]) if len(sys.argv) == 7 else 1000
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("pipeline.jars", f"file://{jar}")
    config.set("parallelism.default", "1")
    # The original job checkpoints (Managed Flink's default: every 60 s); the Kafka
    # sink's at-least-once guarantee flushes on each checkpoint. Every second here, as
    # the Sluice pipelines of the benchmark do.
    config.set("execution.checkpointing.interval", f"{checkpoint_ms} ms")
    # The source reads from the start: the benchmark's input is written beforehand.
    create_kafka_table(env, "source_table", source, servers, {
        "properties.group.id": group,
        "format": "json",
        "scan.startup.mode": "earliest-offset",
    })
    create_kafka_table(env, "sink_table", sink, servers, {
        "format": "json",
        "key.format": "json",
        "key.fields": "ticker",
        "sink.delivery-guarantee": "at-least-once",
    })
    env.execute_sql("INSERT INTO sink_table SELECT * FROM source_table").wait()


def create_kafka_table(env, name, topic, servers, options):
    """A Kafka table with the stock record's columns and these connector options."""
    options = {"connector": "kafka", "topic": topic, "properties.bootstrap.servers": servers, **options}
    with_clause = ",\n".join(f"'{key}' = '{value}'" for key, value in options.items())
    env.execute_sql(f"CREATE TABLE {name} ({COLUMNS}) WITH (\n{with_clause}\n)")


if __name__ == "__main__":
    main()
