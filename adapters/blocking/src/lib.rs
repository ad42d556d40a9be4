//! wsrpc without async (work in progress).
#![forbid(unsafe_code)]
