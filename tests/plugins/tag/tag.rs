// Shared body of the tag-a and tag-b test plugins: each record is forwarded with one
// more header, `tag`, whose value is the crate's `TAG`.

use sluice_sdk::{Config, Error, Header, NewRecord, Output, Record, Transform};

struct Tag;

impl Transform for Tag {
    fn init(_config: &Config) -> Result<Self, Error> {
        Ok(Tag)
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        let mut headers: Vec<Header<'_>> = record.headers().collect();
        headers.push(Header {
            name: "tag",
            value: Some(TAG.as_bytes()),
        });
        out.emit(NewRecord {
            key: record.key(),
            value: record.value(),
            headers: &headers,
            timestamp: record.timestamp(),
        });
        Ok(())
    }
}

sluice_sdk::export!(Tag);
