//! CUDA backend of s3gd (filled by the CUDA issue).
