//! Text in and out: a HuggingFace model directory's tokenizer, chat template and stop
//! conditions, reproducing transformers' `AutoTokenizer` byte for byte.
//!
//! [`Tokenizer`] owns encoding, decoding, the special tokens and the EOS set; [`ChatTemplate`]
//! renders conversations; [`IncrementalDecoder`] turns a stream of generated ids into text
//! deltas; [`StopMatcher`] cuts that text at stop strings. Sampling, EOS handling in the
//! scheduler and the HTTP wire types live elsewhere.
//!
//! Encoding and decoding are the `tokenizers` crate (the library transformers' fast tokenizers
//! wrap). Two transformers-level behaviours are added on top: `add_bos_token` / `add_eos_token`
//! from `tokenizer_config.json` when the `tokenizer.json` post-processor does not already add
//! them, and `clean_up_tokenization_spaces` on decode.

mod chat;
mod detokenizer;
mod error;
mod files;
mod python;
mod stop;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use minijinja::Value;

pub use chat::{ChatMessage, ChatTemplate, ChatTemplateArgs, ContentPart, MessageContent};
pub use detokenizer::IncrementalDecoder;
pub use error::TokenizerError;
pub use stop::{StopMatcher, StopOutput};

use files::ModelFiles;

/// A model's tokenizer. Cloning is cheap (one `Arc`); it is `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    hf: tokenizers::Tokenizer,
    special_ids: HashSet<u32>,
    eos_token_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// BOS to prepend when encoding with special tokens: `add_bos_token` is set and the
    /// post-processor does not add it itself.
    prepend_bos: Option<u32>,
    append_eos: Option<u32>,
    clean_up_spaces: bool,
    chat_template: Option<ChatTemplate>,
    /// transformers' `special_tokens_map`, which it passes to every template render.
    template_special_tokens: Vec<(String, Value)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token_ids", &self.inner.eos_token_ids)
            .field("bos_token", &self.inner.bos_token)
            .field("has_chat_template", &self.inner.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a HuggingFace model directory: `tokenizer.json` (required),
    /// `tokenizer_config.json`, `chat_template.jinja`/`.json`, `generation_config.json` and
    /// `config.json` (all optional).
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|source| TokenizerError::Load {
            path: path.clone(),
            source,
        })?;
        let hf: tokenizers::Tokenizer =
            serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
                path: path.clone(),
                field: None,
                source,
            })?;
        let files = ModelFiles::read(dir)?;
        let config_path = dir.join("tokenizer_config.json");

        let token_id = |field: &str, token: &str| {
            hf.token_to_id(token).ok_or_else(|| TokenizerError::Field {
                path: config_path.clone(),
                field: field.to_owned(),
                value: format!("{token:?}"),
                expected: "a token in tokenizer.json's vocabulary",
            })
        };

        let mut eos_token_ids = files.eos_token_ids.clone();
        if let Some(eos) = &files.eos_token {
            eos_token_ids.push(token_id("eos_token", eos)?);
        }
        let mut seen = HashSet::new();
        eos_token_ids.retain(|id| seen.insert(*id));

        let bos_token = files
            .bos_token
            .clone()
            .or_else(|| files.bos_token_id.and_then(|id| hf.id_to_token(id)));

        // What the post-processor adds by itself decides whether the flags add anything.
        let empty = hf
            .encode_fast("", true)
            .map_err(|source| TokenizerError::Encode { source })?;
        let mut prepend_bos = None;
        if let (Some(true), Some(bos)) = (files.add_bos_token, &bos_token) {
            let id = token_id("bos_token", bos)?;
            if empty.get_ids().first() != Some(&id) {
                prepend_bos = Some(id);
            }
        }
        let mut append_eos = None;
        if let (Some(true), Some(eos)) = (files.add_eos_token, &files.eos_token) {
            let id = token_id("eos_token", eos)?;
            if empty.get_ids().last() != Some(&id) {
                append_eos = Some(id);
            }
        }

        let special_ids = hf
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();

        let chat_template = match &files.chat_template {
            Some((source, origin)) => {
                Some(ChatTemplate::new(source, &origin.display().to_string())?)
            }
            None => None,
        };

        let mut template_special_tokens = Vec::new();
        let named = [
            ("bos_token", &bos_token),
            ("eos_token", &files.eos_token),
            ("unk_token", &files.unk_token),
            ("pad_token", &files.pad_token),
        ];
        for (name, token) in named {
            if let Some(token) = token {
                template_special_tokens.push((name.to_owned(), Value::from(token.as_str())));
            }
        }
        if !files.additional_special_tokens.is_empty() {
            let list: Vec<Value> = files
                .additional_special_tokens
                .iter()
                .map(|t| Value::from(t.as_str()))
                .collect();
            template_special_tokens
                .push(("additional_special_tokens".to_owned(), Value::from(list)));
        }

        Ok(Tokenizer {
            inner: Arc::new(Inner {
                hf,
                special_ids,
                eos_token_ids,
                bos_token,
                eos_token: files.eos_token,
                prepend_bos,
                append_eos,
                clean_up_spaces: files.clean_up_tokenization_spaces,
                chat_template,
                template_special_tokens,
            }),
        })
    }

    /// Token ids of `text`, as transformers' `tokenizer(text, add_special_tokens=...)`.
    /// Special-token strings in `text` become their ids either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .hf
            .encode_fast(text, add_special_tokens)
            .map_err(|source| TokenizerError::Encode { source })?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special_tokens {
            if let Some(bos) = self.inner.prepend_bos {
                ids.insert(0, bos);
            }
            if let Some(eos) = self.inner.append_eos {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Text of `ids`, as transformers' `decode(ids, skip_special_tokens=...)`: invalid UTF-8
    /// from split byte tokens becomes U+FFFD; ids outside the vocabulary are dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let text = self.decode_raw(ids, skip_special_tokens)?;
        Ok(if self.inner.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Decoding without `clean_up_tokenization_spaces`, for the incremental decoder, which
    /// applies the clean-up itself across deltas.
    pub(crate) fn decode_raw(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizerError> {
        self.inner
            .hf
            .decode(ids, skip_special_tokens)
            .map_err(|source| TokenizerError::Decode { source })
    }

    pub(crate) fn cleans_up_spaces(&self) -> bool {
        self.inner.clean_up_spaces
    }

    /// The ids that end generation: `generation_config.json`'s `eos_token_id` (else
    /// `config.json`'s), then the tokenizer's `eos_token`, without duplicates.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_token_ids
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_token.as_deref()
    }

    /// Vocabulary size including added tokens (may be smaller than the model's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.hf.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.hf.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.hf.token_to_id(token)
    }

    /// Whether `id` is an added token marked special (what `skip_special_tokens` drops).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.contains(&id)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.chat_template.as_ref()
    }

    /// Template arguments as transformers builds them: the special tokens map plus
    /// `add_generation_prompt`, `tools = None`, `documents = None`. Add tools or keyword
    /// arguments to it and pass it to [`ChatTemplate::render`].
    pub fn chat_template_args(&self, add_generation_prompt: bool) -> ChatTemplateArgs {
        ChatTemplateArgs {
            add_generation_prompt,
            special_tokens: self.inner.template_special_tokens.clone(),
            ..ChatTemplateArgs::default()
        }
    }

    /// The prompt text of a conversation, as transformers' `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)`. Encode it with `add_special_tokens = false`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template().ok_or(TokenizerError::NoChatTemplate)?;
        template.render(messages, &self.chat_template_args(add_generation_prompt))
    }
}

/// transformers' `clean_up_tokenization`: the same `str.replace` calls in the same order.
pub(crate) fn clean_up_tokenization(text: &str) -> String {
    const REPLACEMENTS: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    let mut out = text.to_owned();
    for (from, to) in REPLACEMENTS {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}
