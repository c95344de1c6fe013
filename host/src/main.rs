use clap::Parser;
#[derive(Parser)]
struct A { #[command(flatten)] o: lantern::bench::BenchOptions }
#[tokio::main]
async fn main() -> anyhow::Result<()> { lantern::bench::run(A::parse().o).await }
