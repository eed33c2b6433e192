//! Reading the tokenizer-related files of a HuggingFace model directory besides
//! `tokenizer.json`: `tokenizer_config.json`, `chat_template.jinja` / `chat_template.json`,
//! `generation_config.json` and `config.json`.
//!
//! This module owns the tolerant parsing of their many historical spellings (a token as a string
//! or as an `AddedToken` object, `eos_token_id` as an int or a list, `chat_template` as a string
//! or a list of named templates). It only reports what the files say; resolving token strings to
//! ids and choosing the EOS set is [`crate::tokenizer::Tokenizer`]'s job.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::tokenizer::TokenizerError;

/// What the optional files of a model directory say about tokenization.
#[derive(Debug, Default)]
pub(crate) struct ModelFiles {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub additional_special_tokens: Vec<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub clean_up_tokenization_spaces: bool,
    /// The default chat template and the file it came from.
    pub chat_template: Option<(String, PathBuf)>,
    /// `eos_token_id` of `generation_config.json`, else of `config.json`.
    pub eos_token_ids: Vec<u32>,
    /// `bos_token_id` of `generation_config.json`, else of `config.json`.
    pub bos_token_id: Option<u32>,
}

impl ModelFiles {
    pub fn read(dir: &Path) -> Result<ModelFiles, TokenizerError> {
        let mut files = ModelFiles::default();

        let config_path = dir.join("tokenizer_config.json");
        if let Some(config) = read_optional_json(&config_path)? {
            files.bos_token = token_field(&config, "bos_token", &config_path)?;
            files.eos_token = token_field(&config, "eos_token", &config_path)?;
            files.pad_token = token_field(&config, "pad_token", &config_path)?;
            files.unk_token = token_field(&config, "unk_token", &config_path)?;
            files.add_bos_token = bool_field(&config, "add_bos_token", &config_path)?;
            files.add_eos_token = bool_field(&config, "add_eos_token", &config_path)?;
            // transformers 5 defaults this to false; checkpoints that want it say so.
            files.clean_up_tokenization_spaces =
                bool_field(&config, "clean_up_tokenization_spaces", &config_path)?.unwrap_or(false);
            if let Some(list) = config.get("additional_special_tokens") {
                files.additional_special_tokens = token_list(list, &config_path)?;
            }
            if let Some(template) = config.get("chat_template") {
                files.chat_template = default_template(template, "chat_template", &config_path)?
                    .map(|t| (t, config_path.clone()));
            }
        }

        // transformers >= 4.43 saves the template beside the config, and the file wins.
        let json_template_path = dir.join("chat_template.json");
        if let Some(json) = read_optional_json(&json_template_path)?
            && let Some(template) = json.get("chat_template")
            && let Some(t) = default_template(template, "chat_template", &json_template_path)?
        {
            files.chat_template = Some((t, json_template_path));
        }
        let jinja_path = dir.join("chat_template.jinja");
        if let Some(text) = read_optional(&jinja_path)? {
            files.chat_template = Some((text, jinja_path));
        }

        // generate() takes its generation config from config.json when there is no
        // generation_config.json, field by field.
        let model_config_path = dir.join("config.json");
        let model_config = read_optional_json(&model_config_path)?;
        let generation_path = dir.join("generation_config.json");
        let generation = read_optional_json(&generation_path)?;
        let sources = [
            (generation.as_ref(), &generation_path),
            (model_config.as_ref(), &model_config_path),
        ];
        for (json, path) in sources {
            let Some(json) = json else { continue };
            if files.eos_token_ids.is_empty() {
                files.eos_token_ids = id_list(json, "eos_token_id", path)?;
            }
            if files.bos_token_id.is_none() {
                files.bos_token_id = id_list(json, "bos_token_id", path)?.first().copied();
            }
        }
        Ok(files)
    }
}

/// Reads a file, `Ok(None)` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Load {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let json = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_owned(),
        field: None,
        source,
    })?;
    Ok(Some(json))
}

fn field_error(path: &Path, field: &str, value: &Value, expected: &'static str) -> TokenizerError {
    TokenizerError::Field {
        path: path.to_owned(),
        field: field.to_owned(),
        value: value.to_string(),
        expected,
    }
}

/// A special token written as `"<s>"` or as `{"content": "<s>", ...}`; `null` means none.
fn token_value(value: &Value, field: &str, path: &Path) -> Result<Option<String>, TokenizerError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(map) => match map.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(field_error(
                path,
                field,
                value,
                "an object with a string `content`",
            )),
        },
        _ => Err(field_error(
            path,
            field,
            value,
            "a string or {\"content\": ...}",
        )),
    }
}

fn token_field(json: &Value, field: &str, path: &Path) -> Result<Option<String>, TokenizerError> {
    json.get(field)
        .map_or(Ok(None), |v| token_value(v, field, path))
}

fn token_list(value: &Value, path: &Path) -> Result<Vec<String>, TokenizerError> {
    let field = "additional_special_tokens";
    let Value::Array(items) = value else {
        return Err(field_error(path, field, value, "a list of tokens"));
    };
    let mut tokens = Vec::with_capacity(items.len());
    for item in items {
        tokens.extend(token_value(item, field, path)?);
    }
    Ok(tokens)
}

fn bool_field(json: &Value, field: &str, path: &Path) -> Result<Option<bool>, TokenizerError> {
    match json.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(field_error(path, field, other, "a boolean")),
    }
}

/// A token id field written as an int or a list of ints; absent or `null` is empty.
fn id_list(json: &Value, field: &str, path: &Path) -> Result<Vec<u32>, TokenizerError> {
    let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match json.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| as_id(item).ok_or_else(|| field_error(path, field, item, "a token id")))
            .collect(),
        Some(value) => as_id(value)
            .map(|id| vec![id])
            .ok_or_else(|| field_error(path, field, value, "a token id or a list of them")),
    }
}

/// `chat_template` as a string, or as a list of `{name, template}` of which transformers uses
/// the one named `default` (and no template if there is none).
fn default_template(
    value: &Value,
    field: &str,
    path: &Path,
) -> Result<Option<String>, TokenizerError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(items) => {
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                let (Some(name), Some(template)) = (name, template) else {
                    return Err(field_error(
                        path,
                        field,
                        item,
                        "{\"name\": .., \"template\": ..}",
                    ));
                };
                if name == "default" {
                    return Ok(Some(template.to_owned()));
                }
            }
            Ok(None)
        }
        _ => Err(field_error(
            path,
            field,
            value,
            "a string or a list of named templates",
        )),
    }
}
