//! Plugin authoring: scaffold a project (`plugin new`), build it with its language's
//! tool (`plugin build`), run it on records from a file with the host's runtime
//! (`plugin test`), and describe a component (`plugin inspect`). Nothing here talks to
//! Kafka; the pipeline never calls into this module.

pub mod builder;
pub mod command;
mod harness;
mod inspect;
mod records;
mod scaffold;
mod sdk;
