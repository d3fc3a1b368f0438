//! Test plugin: forwards every record with the header `tag: B`.

const TAG: &str = "B";

include!("../../tag/tag.rs");
