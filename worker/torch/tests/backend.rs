//! The worker-runtime adapter's model cards. (Running jobs needs the runtime's NATS-backed
//! event sink; the tests/ crate at the repo root covers that path.)

mod common;

use common::*;
use switchyard_schemas as wire;
use switchyard_torch::*;
use switchyard_worker::Backend;

#[test]
fn decoder_card() {
    let backend = TorchBackend::new(load(tiny_llama(), None), None);
    assert_eq!(backend.name(), "torch");
    let cards = backend.models();
    assert_eq!(cards.len(), 1);
    let card = &cards[0];
    assert_eq!(card.name, "tiny-llama");
    assert_eq!(card.kind, wire::ModelKind::Chat);
    assert_eq!(card.context_length, Some(256));
    assert_eq!(card.backend, "torch");
    assert_eq!(card.v, wire::WIRE_VERSION);
}

#[test]
fn encoder_card_with_a_chosen_name() {
    let backend = TorchBackend::new(load(minilm(), None), Some("minilm".into()));
    let card = &backend.models()[0];
    assert_eq!(card.name, "minilm");
    assert_eq!(card.kind, wire::ModelKind::Embedding);
    assert_eq!(card.context_length, Some(256));
}

#[test]
fn worker_args_load_the_engine() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        torch: TorchWorkerArgs,
    }
    let path = tiny_llama();
    let cli = Cli::parse_from(["x", "--model-path", path.to_str().unwrap(), "--name", "tl", "--dtype", "bf16"]);
    let backend = TorchBackend::load(&cli.torch).unwrap();
    assert_eq!(backend.models()[0].name, "tl");
    assert_eq!(backend.engine().info().dtype, DType::BF16);
}
