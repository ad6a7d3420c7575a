//! The `rainforest` binary: everything lives in the library; see `cli`.

/// mimalloc: the pinger allocates small, short-lived buffers per request from
/// many threads, where it measurably beats the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rainforest::cli::main()
}
