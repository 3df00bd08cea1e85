//! The `redrive` binary: the sidecar and its operations commands (see [`redrive_sidecar`]).

#![forbid(unsafe_code)]

// jemalloc for every allocation, librdkafka's included (the dependency exports `malloc`):
// glibc's malloc serves librdkafka's per-record `calloc` on its slow path and makes threads
// that free what others allocated contend for its arenas (BENCHMARKS.md, Tuning).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    redrive_sidecar::cli::main()
}
