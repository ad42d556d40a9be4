//! Typed methods and topics turn a mismatch between server and client into a compile error:
//! each file in `tests/ui` must fail to compile with the error in its `.stderr` next to it
//! (`TRYBUILD=overwrite cargo test -p wsrpc-core --test typed_compile_fail` rewrites them
//! after a deliberate change).

#[test]
fn typed_mismatches_do_not_compile() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
