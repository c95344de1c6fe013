//! The `lantern` binary: the command line and nothing else.

/// jemalloc instead of the system allocator: glibc's per-thread arenas kept growing the server's
/// resident memory under a long mixed load (fragmentation, not live data; `scripts/soak.sh`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    lantern::cli::main()
}
