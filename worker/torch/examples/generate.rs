//! `switchyard generate` without the switchyard binary: the completion of one prompt from a
//! model folder, no NATS or Redis.
//!
//! cargo run --release -p switchyard-torch --example generate -- \
//!     --model-path models/tiny-llama --prompt "The quick brown fox" --temperature 0

use clap::Parser;

#[derive(Parser)]
#[command(about = "Complete one prompt with a local Hugging Face model folder")]
struct Cli {
    #[command(flatten)]
    args: switchyard_torch::GenerateArgs,
}

fn main() -> anyhow::Result<()> {
    switchyard_torch::run_generate(Cli::parse().args)
}
