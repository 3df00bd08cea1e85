//! trybuild UI tests: every pass case compiles; every fail case fails with exactly the
//! checked-in `.stderr` (regenerate with `TRYBUILD=overwrite cargo test -p redrive-macros`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
