//! The `redrive` sidecar binary (feature `sidecar`): see [`redrive::sidecar`].

#![forbid(unsafe_code)]

// jemalloc for every allocation, librdkafka's included (the dependency exports `malloc`):
// glibc's malloc serves librdkafka's per-record `calloc` on its slow path and makes threads
// that free what others allocated contend for its arenas (BENCHMARKS.md, session 14).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    redrive::sidecar::cli::main()
}
