//! Attribute macros for redrive. See the `redrive` crate for documentation.
#![forbid(unsafe_code)]
