package sluice.peers;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;

/**
 * The Kafka Streams peer of peers-bench: every record of the input topic to the output
 * topic, unchanged (key, value and headers), at-least-once or exactly_once_v2.
 *
 * <p>Usage: PassThrough BOOTSTRAP INPUT OUTPUT APPLICATION_ID at_least_once|exactly_once_v2
 */
public final class PassThrough {
    public static void main(String[] args) throws InterruptedException {
        if (args.length != 5) {
            System.err.println(
                "usage: PassThrough BOOTSTRAP INPUT OUTPUT APPLICATION_ID at_least_once|exactly_once_v2");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[3]);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, args[4]);
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        // One stream thread, as Sluice runs one worker by default.
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        // Commit every second, as the Sluice pipelines of the benchmark checkpoint.
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(args[1]).to(args[2]);
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }
}
