//! Write Sluice record transforms in Rust.
//!
//! A plugin is a type that implements [`Transform`], exported with [`export!`] and
//! built with `cargo build --release --target wasm32-wasip2` into a component that
//! Sluice loads directly. The host calls the plugin once per batch; the SDK walks the
//! batch and calls [`Transform::process`] once per record, with the record's fields as
//! slices into the batch (nothing is copied until you copy it).
//!
//! ```no_run
//! use sluice_sdk::{Config, Error, Output, Record, Transform};
//!
//! /// Drops records without a value, forwards the rest unchanged.
//! struct DropTombstones;
//!
//! impl Transform for DropTombstones {
//!     fn init(_config: &Config) -> Result<Self, Error> {
//!         Ok(DropTombstones)
//!     }
//!
//!     fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
//!         if record.value().is_some() {
//!             out.keep();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! sluice_sdk::export!(DropTombstones);
//! ```
//!
//! Each input record yields zero, one or many outputs (filter, map, flat-map), each to
//! the default output or to a named one (routing), or an error for that record alone.
//!
//! A record's value, key and headers are bytes; with the `json` feature (on by
//! default) [`Record::json`] reads the value with serde and [`Output::set_json`]
//! writes one. [`Record::topic`], [`Record::partition`] and [`Record::offset`] are the
//! record's source coordinates.
#![deny(missing_docs)]

pub mod batch;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "guest")]
pub mod state;

pub use batch::{Header, NewRecord, Record};
use batch::{InputBatch, OutputWriter};
#[cfg(feature = "guest")]
pub use state::State;

#[cfg(feature = "guest")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transformer",
        path: "../wit",
        default_bindings_module: "sluice_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "export_transformer",
    });
}

/// A plugin's failure to handle one record (or to start).
///
/// Anything that displays converts into it, so `?` works on most errors.
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message the host will report.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::fmt::Display> From<E> for Error {
    fn from(error: E) -> Self {
        Error(error.to_string())
    }
}

/// The plugin's settings, from the `[plugin.config]` table of the host configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// Settings from key/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config { pairs }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::msg(format!("missing plugin setting `{key}`")))
    }

    /// The value of `key` parsed as `T`, if set.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|e| Error::msg(format!("plugin setting `{key}` = {v:?}: {e}")))
            })
            .transpose()
    }

    /// All settings in the order the host gave them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Where [`Transform::process`] puts the outputs of the record it is handling.
pub struct Output<'w> {
    writer: &'w mut OutputWriter,
    index: u32,
    timestamp: Option<i64>,
}

impl Output<'_> {
    /// Forwards the record unchanged to the default output.
    pub fn keep(&mut self) {
        self.writer.keep(self.index);
    }

    /// Forwards the record unchanged to the named output.
    pub fn keep_to(&mut self, output: &str) {
        self.writer.keep_to(self.index, output);
    }

    /// Forwards the record with a new value (key, headers and timestamp kept).
    pub fn set_value(&mut self, value: Option<&[u8]>) {
        self.writer.replace_value(self.index, value, None);
    }

    /// Forwards the record with a new value to the named output.
    pub fn set_value_to(&mut self, value: Option<&[u8]>, output: &str) {
        self.writer.replace_value(self.index, value, Some(output));
    }

    /// Emits a new record. A record without a timestamp takes the input's.
    pub fn emit(&mut self, record: NewRecord<'_>) {
        let record = self.stamped(record);
        self.writer.record(self.index, &record, None);
    }

    /// Emits a new record to the named output.
    pub fn emit_to(&mut self, record: NewRecord<'_>, output: &str) {
        let record = self.stamped(record);
        self.writer.record(self.index, &record, Some(output));
    }

    fn stamped<'r>(&self, mut record: NewRecord<'r>) -> NewRecord<'r> {
        record.timestamp = record.timestamp.or(self.timestamp);
        record
    }
}

/// A record transform.
///
/// One value of the type lives per plugin instance; it is created by
/// [`Transform::init`] and then sees every batch that instance handles, in order.
pub trait Transform: Sized + 'static {
    /// Creates the plugin from its settings. An error rejects the plugin before it
    /// sees a record; say what is wrong and how to fix it.
    fn init(config: &Config) -> Result<Self, Error>;

    /// Handles one record: call `out` zero, one or many times, or return an error to
    /// report this record alone as failed (its outputs and state writes, if any, are
    /// discarded).
    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error>;

    /// Handles a whole batch. The default calls [`Transform::process`] per record;
    /// override it only to work across records of a batch.
    fn process_batch(&mut self, batch: &InputBatch<'_>, out: &mut OutputWriter) {
        for record in batch.records() {
            let mark = out.mark();
            let mut output = Output {
                writer: out,
                index: record.index(),
                timestamp: record.timestamp(),
            };
            if let Err(error) = self.process(&record, &mut output) {
                out.rollback(mark);
                out.error(record.index(), error.message());
            }
        }
    }
}

/// Writes to the host's log, where the line is tagged with the plugin's name.
#[cfg(feature = "guest")]
pub mod log {
    use crate::bindings::sluice::plugin::log::{Level, write};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        write(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        write(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        write(Level::Warn, message);
    }

    /// Logs at error level. The host reserves ERROR for data at risk; prefer warn.
    pub fn error(message: &str) {
        write(Level::Error, message);
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: Transform>(config: Vec<(String, String)>) -> Result<(), String> {
        let plugin = T::init(&Config::new(config)).map_err(|e| e.0)?;
        INSTANCE.with_borrow_mut(|slot| *slot = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn process<T: Transform>(input: &[u8]) -> Result<Vec<u8>, String> {
        // The host encoded this batch: decode each record once, as it is read.
        let batch = InputBatch::open(input).map_err(|e| e.to_string())?;
        INSTANCE.with_borrow_mut(|slot| {
            let plugin = slot
                .as_mut()
                .and_then(|p| p.downcast_mut::<T>())
                .ok_or_else(|| "process was called before init".to_string())?;
            let mut out = OutputWriter::new();
            plugin.process_batch(&batch, &mut out);
            Ok(out.finish())
        })
    }
}

/// Exports a [`Transform`] as the plugin's entry point. Use it once per plugin crate.
#[cfg(feature = "guest")]
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __SluiceExport;

        impl $crate::bindings::exports::sluice::plugin::transform::Guest for __SluiceExport {
            fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
                -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init::<$plugin>(config)
            }

            fn process(input: ::std::vec::Vec<u8>)
                -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__private::process::<$plugin>(&input)
            }
        }

        $crate::bindings::export_transformer!(__SluiceExport with_types_in $crate::bindings);
    };
}
