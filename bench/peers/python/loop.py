"""The Python peer of peers-bench: a confluent-kafka consume-produce loop, the same
shape as bench/src/bin/plain_loop.rs (batches of up to 1000 records, key, value,
headers and timestamp copied to the same partition, offsets committed every second and
at exit), at-least-once.

Usage: loop.py BOOTSTRAP INPUT OUTPUT GROUP
"""

import signal
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

BATCH = 1000
IDLE_POLL_S = 0.1
COMMIT_INTERVAL_S = 1.0

stop = False


def request_stop(_signal, _frame):
    global stop
    stop = True


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: loop.py BOOTSTRAP INPUT OUTPUT GROUP")
    servers, source, sink, group = sys.argv[1:]
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 8192,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": servers,
            "enable.idempotence": True,
            "acks": "all",
            "queue.buffering.max.kbytes": 16384,
        }
    )
    consumer.subscribe([source])
    following = {}
    last_commit = time.monotonic()
    copied = 0
    while not stop:
        for message in consumer.consume(num_messages=BATCH, timeout=IDLE_POLL_S):
            if message.error():
                print(f"python loop: consume error: {message.error()}", file=sys.stderr)
                continue
            timestamp_type, timestamp = message.timestamp()
            while True:
                try:
                    producer.produce(
                        sink,
                        value=message.value(),
                        key=message.key(),
                        partition=message.partition(),
                        headers=message.headers(),
                        timestamp=timestamp if timestamp_type else 0,
                    )
                    break
                except BufferError:
                    producer.poll(0.02)
            following[message.partition()] = message.offset() + 1
            copied += 1
        producer.poll(0)
        if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
            commit(consumer, source, following, asynchronous=True)
            last_commit = time.monotonic()
    if producer.flush(30) > 0:
        sys.exit("python loop: records still undelivered after 30 s")
    commit(consumer, source, following, asynchronous=False)
    consumer.close()
    print(f"python loop: copied {copied} records", file=sys.stderr)


def commit(consumer, topic, following, asynchronous):
    offsets = [TopicPartition(topic, p, o) for p, o in following.items()]
    if not offsets:
        return
    try:
        consumer.commit(offsets=offsets, asynchronous=asynchronous)
    except KafkaException as error:
        print(f"python loop: commit failed ({error}); the next one retries it", file=sys.stderr)


if __name__ == "__main__":
    main()
