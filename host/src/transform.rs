//! The transform stage: runs each batch through the live plugin instance and checks
//! what comes back before anything reaches the sink.

use sluice_sdk::batch::{DecodeError, InputBatch, Op, OutputReader};
use thiserror::Error;

use crate::plugin::Plugin;
use crate::runtime::{Instance, PluginError};

#[derive(Debug, Error)]
pub enum TransformError {
    #[error("plugin {plugin} {error} (batch starting at {topic}/{partition}@{offset})")]
    Plugin {
        plugin: String,
        error: PluginError,
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("plugin {plugin} failed on record {topic}/{partition}@{offset}: {message}")]
    Record {
        plugin: String,
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("plugin {plugin} returned a malformed output batch: {error}")]
    Malformed { plugin: String, error: DecodeError },
}

/// The live plugin version and its instance.
pub struct TransformStage {
    plugin: Plugin,
    instance: Instance,
}

impl TransformStage {
    pub fn new(plugin: Plugin, instance: Instance) -> Self {
        TransformStage { plugin, instance }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs `input` (the encoded form of `batch`) through the plugin.
    pub fn run(&mut self, input: &[u8], batch: &InputBatch<'_>) -> Result<Vec<u8>, TransformError> {
        self.instance.process(input).map_err(|error| {
            let first = batch.get(0).expect("batches are never empty");
            TransformError::Plugin {
                plugin: self.plugin.origin.to_string(),
                error,
                topic: first.topic().to_string(),
                partition: first.partition(),
                offset: first.offset(),
            }
        })
    }

    /// Reads the output ops, failing on the first record the plugin reported as failed.
    /// A dead-letter policy would divert those records here instead.
    pub fn ops<'a>(
        &self,
        output: &'a [u8],
        batch: &InputBatch<'_>,
    ) -> Result<Vec<Op<'a>>, TransformError> {
        let malformed = |error| TransformError::Malformed {
            plugin: self.plugin.origin.to_string(),
            error,
        };
        let reader = OutputReader::parse(output, batch.len() as u32).map_err(malformed)?;
        let mut ops = Vec::new();
        for op in reader {
            match op.map_err(malformed)? {
                Op::Error { index, message } => {
                    let record = batch.get(index).expect("index checked by the reader");
                    return Err(TransformError::Record {
                        plugin: self.plugin.origin.to_string(),
                        topic: record.topic().to_string(),
                        partition: record.partition(),
                        offset: record.offset(),
                        message: message.to_string(),
                    });
                }
                op => ops.push(op),
            }
        }
        Ok(ops)
    }
}
