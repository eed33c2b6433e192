//! Reading HuggingFace safetensors checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped.
//!
//! [`WeightFiles`] validates every file's header up front (a truncated or corrupt file is refused
//! with its path before any tensor is read) and hands out [`HostTensor`] views into the maps.
//! Turning those views into backend-resident weights (and checking their shapes against the
//! model config) is the model's business, not this module's.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype as StDtype;

use crate::dtype::DType;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file (truncated or corrupt): {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: invalid shard index: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("{dir}: no model.safetensors and no model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    #[error("tensor `{name}` is missing from the checkpoint in {dir}")]
    Missing { dir: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
}

struct TensorEntry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range inside the file's map.
    range: std::ops::Range<usize>,
}

/// The memory-mapped weight files of one model directory.
pub struct WeightFiles {
    dir: PathBuf,
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: HashMap<String, TensorEntry>,
}

/// A borrowed tensor inside a mapped file.
#[derive(Clone, Copy)]
pub struct HostTensor<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl WeightFiles {
    /// Maps `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(dir, &index)?
        } else {
            return Err(WeightError::NoWeights {
                dir: dir.to_path_buf(),
            });
        };

        let mut out = WeightFiles {
            dir: dir.to_path_buf(),
            paths: Vec::new(),
            maps: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in files {
            let file = File::open(&path).map_err(|source| WeightError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only and lives as long as `WeightFiles`. Like every
            // memory-mapped loader (HF safetensors, candle, llama.cpp) we rely on the checkpoint
            // not being truncated by another process while the model is loaded.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| WeightError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| WeightError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let data_start = 8 + header_len;
            let file_index = out.maps.len();
            for (name, info) in metadata.tensors() {
                let dtype = match info.dtype {
                    StDtype::F32 => DType::F32,
                    StDtype::F16 => DType::F16,
                    StDtype::BF16 => DType::BF16,
                    other => {
                        return Err(WeightError::UnsupportedDtype {
                            path,
                            name,
                            dtype: format!("{other:?}"),
                        });
                    }
                };
                let (begin, end) = info.data_offsets;
                out.tensors.insert(
                    name,
                    TensorEntry {
                        file: file_index,
                        dtype,
                        shape: info.shape.clone(),
                        range: data_start + begin..data_start + end,
                    },
                );
            }
            out.paths.push(path);
            out.maps.push(map);
        }
        Ok(out)
    }

    /// The directory the weights were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of every tensor, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.range.len()).sum()
    }

    /// Looks a tensor up, checking its shape.
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<HostTensor<'_>, WeightError> {
        let (key, entry) =
            self.tensors
                .get_key_value(name)
                .ok_or_else(|| WeightError::Missing {
                    dir: self.dir.clone(),
                    name: name.to_string(),
                })?;
        let path = &self.paths[entry.file];
        if entry.shape != expected {
            return Err(WeightError::Shape {
                path: path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        Ok(HostTensor {
            name: key,
            path,
            dtype: entry.dtype,
            shape: &entry.shape,
            bytes: &self.maps[entry.file][entry.range.clone()],
        })
    }
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let text = std::fs::read_to_string(index).map_err(|source| WeightError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| WeightError::Index {
        path: index.to_path_buf(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("field `weight_map` is missing or not an object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[`{tensor}`] is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad(format!(
                "weight_map[`{tensor}`] = `{file}` leaves the model directory"
            )));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl HostTensor<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values converted to `f32` (exact for every supported dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        self.write_f32(&mut out);
        out
    }

    /// Converts into `out` (length `len()`).
    pub fn write_f32(&self, out: &mut [f32]) {
        let chunks = self.bytes.chunks_exact(self.dtype.size());
        match self.dtype {
            DType::F32 => out.iter_mut().zip(chunks).for_each(|(o, c)| {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }),
            DType::F16 => out.iter_mut().zip(chunks).for_each(|(o, c)| {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }),
            DType::BF16 => out.iter_mut().zip(chunks).for_each(|(o, c)| {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }),
        }
    }

    /// The raw elements as `u16` (for f16/bf16 tensors).
    pub fn to_u16(&self) -> Vec<u16> {
        self.bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
}
