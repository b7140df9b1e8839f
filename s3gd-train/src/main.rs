//! The s3gd training binary.
fn main() {}
