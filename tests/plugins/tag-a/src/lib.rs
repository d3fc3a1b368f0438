//! Test plugin: forwards every record with the header `tag: A`.

const TAG: &str = "A";

include!("../../tag/tag.rs");
