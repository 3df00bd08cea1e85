//! The `redrive` sidecar binary (feature `sidecar`): see [`redrive::sidecar`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    redrive::sidecar::cli::main()
}
