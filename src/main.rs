//! The `rainforest` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    rainforest::cli::main()
}
