//! The `lantern` binary: the command line and nothing else.

fn main() -> std::process::ExitCode {
    lantern::cli::main()
}
