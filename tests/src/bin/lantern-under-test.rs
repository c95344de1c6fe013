//! The real `lantern` entry point, built inside this package so integration tests can start it
//! (and SIGKILL it) through `CARGO_BIN_EXE_lantern-under-test`.

fn main() -> std::process::ExitCode {
    lantern::cli::main()
}
