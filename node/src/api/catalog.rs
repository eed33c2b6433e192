//! [`Catalog`]: the models this node serves as the API sees them — names and aliases, tokenizer
//! and chat template, context window — built once at start-up.

use std::collections::HashMap;

use anyhow::{Context, bail};
use helixflow_kernels::config::ModelConfig as ModelShape;
use helixflow_kernels::tokenizer::Tokenizer;
use helixflow_runtime::config::ModelConfig;

pub struct CatalogModel {
    pub id: String,
    pub aliases: Vec<String>,
    pub tokenizer: Tokenizer,
    /// Longest prompt + completion served.
    pub context_window: usize,
    /// Length of the embedding vectors.
    pub hidden_size: usize,
    /// Unix time the node loaded it (the `created` of `/v1/models`).
    pub created: u64,
}

pub struct Catalog {
    models: Vec<CatalogModel>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    pub fn load(models: &[ModelConfig]) -> anyhow::Result<Catalog> {
        let created = super::openai::unix_now();
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        for (i, model) in models.iter().enumerate() {
            let config = ModelShape::from_dir(&model.path)
                .with_context(|| format!("model `{}`", model.id))?;
            let tokenizer = Tokenizer::from_dir(&model.path)
                .with_context(|| format!("model `{}`", model.id))?;
            let limit = config.max_position_embeddings;
            let context_window = match model.context_window {
                Some(window) if window > limit => bail!(
                    "model `{}`: context_window {window} is larger than the model's max_position_embeddings {limit}",
                    model.id
                ),
                Some(window) => window,
                None => limit,
            };
            for name in std::iter::once(&model.id).chain(&model.aliases) {
                by_name.insert(name.clone(), i);
            }
            entries.push(CatalogModel {
                id: model.id.clone(),
                aliases: model.aliases.clone(),
                tokenizer,
                context_window,
                hidden_size: config.hidden_size,
                created,
            });
        }
        Ok(Catalog {
            models: entries,
            by_name,
        })
    }

    /// The model a client names, by id or alias.
    pub fn resolve(&self, name: &str) -> Option<&CatalogModel> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    pub fn models(&self) -> &[CatalogModel] {
        &self.models
    }
}
