//! Safetensors checkpoints, single-file or sharded, memory-mapped and copied into tch tensors
//! of the requested dtype and device.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::config::{DType, read_json};
use crate::error::{Result, TorchError};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// Every tensor of a checkpoint, by name; nothing is copied until [`Weights::get`].
pub(crate) struct Weights {
    shards: Vec<Shard>,
    location: HashMap<String, usize>,
    device: Device,
    kind: Kind,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open(dir: &Path, device: Device, dtype: DType) -> Result<Weights> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let index: ShardIndex = read_json(&index, "safetensors index")?;
            let mut names: Vec<&String> = index.weight_map.values().collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(TorchError::MissingFile {
                what: "weights (model.safetensors or model.safetensors.index.json)",
                path: single,
            });
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut location = HashMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| TorchError::io(&path, e))?;
            // SAFETY: the file is only read; a checkpoint rewritten underneath a running
            // server is outside what we promise to survive.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| TorchError::io(&path, e))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| TorchError::invalid(&path, format!("not a safetensors file: {e:?}")))?;
            for name in metadata.tensors().keys() {
                location.insert(name.clone(), shards.len());
            }
            shards.push(Shard { path, mmap, header_len, metadata });
        }
        Ok(Weights { shards, location, device, kind: dtype.kind() })
    }

    pub fn set_dtype(&mut self, dtype: DType) {
        self.kind = dtype.kind();
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The on-disk dtype of the first floating-point tensor, for `--dtype auto` on GPUs when
    /// config.json does not say.
    pub fn disk_dtype(&self) -> Option<DType> {
        let mut dtypes =
            self.shards.iter().flat_map(|s| s.metadata.tensors().into_values().map(|i| i.dtype).collect::<Vec<_>>());
        dtypes.find_map(|d| match d {
            Dtype::F32 => Some(DType::F32),
            Dtype::BF16 => Some(DType::BF16),
            Dtype::F16 => Some(DType::F16),
            _ => None,
        })
    }

    /// The tensor `name`, checked against the shape the config implies, in the compute dtype
    /// on the target device.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.get_raw(name)?;
        let actual = t.size();
        if actual != shape {
            return Err(TorchError::ShapeMismatch { name: name.to_owned(), expected: shape.to_vec(), actual });
        }
        Ok(t.to_device(self.device).to_kind(self.kind))
    }

    /// The first of `names` present in the checkpoint (e.g. with and without a `bert.` prefix).
    pub fn get_first(&self, names: &[String], shape: &[i64]) -> Result<Tensor> {
        match names.iter().find(|n| self.contains(n)) {
            Some(name) => self.get(name, shape),
            None => Err(TorchError::MissingTensor { name: names[0].clone() }),
        }
    }

    fn get_raw(&self, name: &str) -> Result<Tensor> {
        let shard = self
            .location
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| TorchError::MissingTensor { name: name.to_owned() })?;
        let info = shard.metadata.info(name).expect("indexed above");
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            other => {
                return Err(TorchError::UnsupportedDtype { name: name.to_owned(), dtype: format!("{other:?}") });
            }
        };
        let (start, end) = info.data_offsets;
        let base = 8 + shard.header_len;
        let bytes = shard.mmap.get(base + start..base + end).ok_or_else(|| {
            TorchError::invalid(&shard.path, format!("tensor {name:?} lies past the end of the file"))
        })?;
        let size: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(bytes, &size, kind)?)
    }
}
