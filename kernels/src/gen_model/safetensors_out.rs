//! Streams tensors into `.safetensors` files, sharded HuggingFace style when asked.
//!
//! The format is written by hand (8-byte little-endian header length, JSON header with
//! `__metadata__ {"format":"pt"}` padded with spaces to a multiple of 8, then the data) so that
//! no tensor is ever held whole in memory: data is generated a batch of chunks at a time, in
//! parallel, and written in order. Each file is written under a temporary name and renamed
//! when complete, so an interrupted run never leaves a truncated file under a final name.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;
use serde_json::json;

use crate::dtype::DType;

use super::error::GenModelError;
use super::tensors::{TensorSpec, chunk_bytes, chunk_count};

/// Chunks generated concurrently before they are written: bounds memory to about
/// `BATCH_CHUNKS · CHUNK_ELEMENTS · 4` bytes (64 MiB) whatever the model size.
const BATCH_CHUNKS: u64 = 256;

/// The single-file name, and the index name of a sharded checkpoint.
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// Counts written bytes and reports them.
pub(crate) struct Progress<'a> {
    pub(crate) written: u64,
    pub(crate) total: u64,
    pub(crate) report: &'a mut dyn FnMut(u64, u64),
}

impl Progress<'_> {
    fn advance(&mut self, bytes: u64) {
        self.written += bytes;
        (self.report)(self.written, self.total);
    }
}

/// The name safetensors uses for a dtype.
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
    }
}

/// Splits `tensors` (in state-dict order) into shards of at most `max_bytes` each, greedily as
/// transformers' `save_pretrained` does; a tensor larger than `max_bytes` gets a shard of its
/// own. `None` gives one shard.
pub(crate) fn plan_shards(
    tensors: &[TensorSpec],
    dtype: DType,
    max_bytes: Option<u64>,
) -> Vec<Vec<&TensorSpec>> {
    let Some(max_bytes) = max_bytes else {
        return vec![tensors.iter().collect()];
    };
    let mut shards: Vec<Vec<&TensorSpec>> = Vec::new();
    let mut current: Vec<&TensorSpec> = Vec::new();
    let mut current_bytes = 0u64;
    for tensor in tensors {
        let bytes = tensor.elements() * dtype.size() as u64;
        if !current.is_empty() && current_bytes + bytes > max_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(tensor);
        current_bytes += bytes;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// HuggingFace's shard file name, 1-based.
pub(crate) fn shard_name(index: usize, count: usize) -> String {
    format!("model-{index:05}-of-{count:05}.safetensors")
}

/// Writes one safetensors file holding `tensors`, sorted by name as the `safetensors` crate
/// orders them.
pub(crate) fn write_file(
    path: &Path,
    tensors: &[&TensorSpec],
    seed: u64,
    dtype: DType,
    progress: &mut Progress<'_>,
) -> Result<(), GenModelError> {
    let mut sorted: Vec<&TensorSpec> = tensors.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));

    let header = header_bytes(&sorted, dtype).map_err(|source| GenModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let partial = path.with_extension("safetensors.partial");
    let written = write_partial(&partial, &header, &sorted, seed, dtype, progress);
    if written.is_err() {
        // Best effort: the write error is the one worth reporting.
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::rename(&partial, path).map_err(GenModelError::io(path))
}

/// Writes the header and data of one file to `partial`, synced to disk.
fn write_partial(
    partial: &Path,
    header: &[u8],
    sorted: &[&TensorSpec],
    seed: u64,
    dtype: DType,
    progress: &mut Progress<'_>,
) -> Result<(), GenModelError> {
    let file = File::create(partial).map_err(GenModelError::io(partial))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| GenModelError::io(partial)(e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(header).map_err(io)?;
    for tensor in sorted {
        let chunks = chunk_count(tensor);
        let mut start = 0;
        while start < chunks {
            let end = (start + BATCH_CHUNKS).min(chunks);
            let batch: Vec<Vec<u8>> = (start..end)
                .into_par_iter()
                .map(|chunk| chunk_bytes(seed, dtype, tensor, chunk))
                .collect();
            for bytes in &batch {
                out.write_all(bytes).map_err(io)?;
            }
            progress.advance(batch.iter().map(|b| b.len() as u64).sum());
            start = end;
        }
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// The JSON header, space-padded to a multiple of 8 bytes.
fn header_bytes(sorted: &[&TensorSpec], dtype: DType) -> Result<Vec<u8>, serde_json::Error> {
    // Written by hand rather than through a map so the entries keep the data order and the
    // field order safetensors itself uses (`dtype`, `shape`, `data_offsets`).
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for tensor in sorted {
        let bytes = tensor.elements() * dtype.size() as u64;
        header.push(',');
        header.push_str(&serde_json::to_string(&tensor.name)?);
        header.push_str(&format!(
            r#":{{"dtype":"{}","shape":{},"data_offsets":[{},{}]}}"#,
            dtype_name(dtype),
            serde_json::to_string(&tensor.shape)?,
            offset,
            offset + bytes
        ));
        offset += bytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    Ok(header.into_bytes())
}

/// `model.safetensors.index.json`: total sizes and the file of every tensor.
pub(crate) fn index_json(shards: &[Vec<&TensorSpec>], dtype: DType) -> serde_json::Value {
    let mut weight_map = BTreeMap::new();
    let mut parameters = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        for tensor in shard {
            weight_map.insert(tensor.name.clone(), shard_name(i + 1, shards.len()));
            parameters += tensor.elements();
        }
    }
    json!({
        "metadata": {
            "total_parameters": parameters,
            "total_size": parameters * dtype.size() as u64,
        },
        "weight_map": weight_map,
    })
}

/// Removes checkpoint files an earlier run may have left in `dir` (a single file, an index,
/// shards of any count), so a loader cannot pick up stale weights next to the new ones.
pub(crate) fn remove_stale_weights(dir: &Path) -> Result<(), GenModelError> {
    let entries = std::fs::read_dir(dir).map_err(GenModelError::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(GenModelError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_shard = name.len() == shard_name(1, 1).len()
            && name.starts_with("model-")
            && name.contains("-of-")
            && name.ends_with(".safetensors");
        let is_partial = name.starts_with("model") && name.ends_with(".safetensors.partial");
        if name == SINGLE_FILE || name == INDEX_FILE || is_shard || is_partial {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(GenModelError::io(&path))?;
        }
    }
    Ok(())
}
