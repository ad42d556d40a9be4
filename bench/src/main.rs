//! Load benchmarks (work in progress).
fn main() {}
