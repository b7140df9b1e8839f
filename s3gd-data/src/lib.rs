//! Dataset readers and spike encodings.
