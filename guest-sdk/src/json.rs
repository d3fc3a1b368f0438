//! JSON values with serde: read a record's value as a typed struct, write one back.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::Record;
use crate::{Error, NewRecord, Output};

impl Record<'_> {
    /// The record's value parsed as JSON into `T`. A null value or invalid JSON is an
    /// error naming the record's offset, so `?` reports the record as failed.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let value = self.value().ok_or_else(|| {
            Error::msg(format!(
                "record at offset {} has no value; expected JSON",
                self.offset()
            ))
        })?;
        serde_json::from_slice(value).map_err(|e| {
            Error::msg(format!(
                "record at offset {} is not the expected JSON: {e}",
                self.offset()
            ))
        })
    }

    /// The record's value as UTF-8 text, if it has one.
    pub fn value_str(&self) -> Result<Option<&str>, Error> {
        self.value()
            .map(|v| {
                std::str::from_utf8(v).map_err(|e| {
                    Error::msg(format!(
                        "value of the record at offset {} is not UTF-8: {e}",
                        self.offset()
                    ))
                })
            })
            .transpose()
    }

    /// The record's key as UTF-8 text, if it has one.
    pub fn key_str(&self) -> Result<Option<&str>, Error> {
        self.key()
            .map(|k| {
                std::str::from_utf8(k).map_err(|e| {
                    Error::msg(format!(
                        "key of the record at offset {} is not UTF-8: {e}",
                        self.offset()
                    ))
                })
            })
            .transpose()
    }
}

impl Output<'_> {
    /// Forwards the record with `value` serialized as JSON (key, headers and timestamp kept).
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)?;
        self.set_value(Some(&bytes));
        Ok(())
    }

    /// Forwards the record with `value` serialized as JSON to the named output.
    pub fn set_json_to<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        output: &str,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)?;
        self.set_value_to(Some(&bytes), output);
        Ok(())
    }

    /// Emits a new record whose value is `value` serialized as JSON, with this key.
    pub fn emit_json<T: Serialize + ?Sized>(
        &mut self,
        key: Option<&[u8]>,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)?;
        self.emit(NewRecord {
            key,
            value: Some(&bytes),
            ..NewRecord::default()
        });
        Ok(())
    }
}
