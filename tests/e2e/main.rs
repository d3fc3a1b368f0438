//! End-to-end tests: the `sluice` binary between topics of a real Apache Kafka broker
//! (started by `scripts/kafka.sh start`), with plugins built from this repository.
//! Every test uses its own topics and consumer groups, so tests share the broker.

mod admin;
mod auth;
mod authoring;
mod bad_input;
mod batch_api;
mod config_limits;
mod console;
mod deploy;
mod docs;
mod examples;
mod failures;
mod faults;
mod image;
mod install;
mod languages;
mod passthrough;
mod properties;
mod proxy;
mod recovery;
mod sandbox;
mod scale;
mod startup;
mod state;
mod support;
mod swap;
