//! Local Hugging Face models on libtorch (placeholder; the torch backend lands here).
