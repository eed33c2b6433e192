//! Chat templates: a model's Jinja template compiled once with minijinja, configured the way
//! transformers' `_compile_jinja_template` configures Jinja2, and rendered the way
//! `apply_chat_template(messages, tokenize=False, ...)` renders it.
//!
//! Owns the environment (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
//! `strftime_now`, transformers' `tojson`, Python string/dict/list methods, Python `str()` output)
//! and the message wire types. It does not tokenize: the rendered prompt goes back through
//! [`crate::tokenizer::Tokenizer::encode`] with `add_special_tokens = false`.
//!
//! Message content is passed to the template as given, with one exception: a list of content
//! parts given to a template that never iterates over a message's content (a template written
//! for string content, like Llama 3's `message['content'] | trim`) is joined into one string,
//! the concatenation of its text parts, as TGI does. A non-text part is then an error.

use std::sync::Arc;

use minijinja::{Environment, Value};
use serde::{Deserialize, Serialize};

use crate::tokenizer::TokenizerError;
use crate::tokenizer::python::{self, RaisedException};

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation, in the OpenAI shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// `null` or absent content (an assistant turn that only calls tools) stays
    /// [`MessageContent::None`], which templates see as Python `None`, as in transformers.
    #[serde(default)]
    pub content: MessageContent,
    /// Any other field (`name`, `tool_calls`, `tool_call_id`, `reasoning_content`, ...): a map
    /// passed to the template unchanged, its keys in the order given. Nested JSON objects keep
    /// their key order too, which `tojson` of tool-call arguments depends on.
    #[serde(flatten)]
    pub extra: Value,
}

/// A message's content: a string, a list of typed parts, or none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
    #[default]
    None,
}

/// One part of a multi-part content list, e.g. `{"type": "text", "text": "Hi"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub part_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The rest of the part (`image_url`, ...), passed through for templates that read it.
    #[serde(flatten)]
    pub extra: Value,
}

impl ChatMessage {
    /// A message with string content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: MessageContent::Text(content.into()),
            extra: empty_map(),
        }
    }
}

fn empty_map() -> Value {
    ordered_map(Vec::new())
}

/// The template's keyword arguments besides `messages`.
#[derive(Clone, Debug, Default)]
pub struct ChatTemplateArgs {
    pub add_generation_prompt: bool,
    /// Tool schemas; `None` renders as Python `None`, as transformers passes it.
    pub tools: Option<Value>,
    /// RAG documents; `None` renders as Python `None`.
    pub documents: Option<Value>,
    /// The tokenizer's special tokens (`bos_token`, `eos_token`, ...) as transformers passes
    /// its `special_tokens_map`.
    pub special_tokens: Vec<(String, Value)>,
    /// Any further keyword arguments (`enable_thinking`, `date_string`, ...); these win over
    /// the special tokens, as `{**special_tokens_map, **kwargs}` does in transformers.
    pub extra: Vec<(String, Value)>,
}

/// A compiled chat template. Cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    content_as_parts: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("content_as_parts", &self.content_as_parts)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names where it came from, for errors.
    pub fn new(source: &str, origin: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|source| TokenizerError::TemplateSyntax {
                origin: origin.to_owned(),
                source,
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let mut text = String::new();
            python::python_str(value, &mut text);
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        env.add_function("raise_exception", python::raise_exception);
        env.add_function("strftime_now", python::strftime_now);
        env.add_filter("tojson", python::tojson);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(source))
            .map_err(|source| TokenizerError::TemplateSyntax {
                origin: origin.to_owned(),
                source,
            })?;
        Ok(ChatTemplate {
            env: Arc::new(env),
            source: Arc::from(source),
            content_as_parts: iterates_over_content(source),
        })
    }

    /// The template text as the model ships it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template reads message content as a list of parts (and so receives lists
    /// unchanged) rather than as a string.
    pub fn expects_content_parts(&self) -> bool {
        self.content_as_parts
    }

    /// Renders the conversation as transformers' `apply_chat_template(..., tokenize=False)`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        args: &ChatTemplateArgs,
    ) -> Result<String, TokenizerError> {
        let messages = messages
            .iter()
            .enumerate()
            .map(|(index, m)| self.message_value(index, m))
            .collect::<Result<Vec<Value>, TokenizerError>>()?;

        let mut context: Vec<(String, Value)> = vec![
            ("messages".to_owned(), Value::from(messages)),
            (
                "tools".to_owned(),
                args.tools.clone().unwrap_or(Value::from(())),
            ),
            (
                "documents".to_owned(),
                args.documents.clone().unwrap_or(Value::from(())),
            ),
            (
                "add_generation_prompt".to_owned(),
                Value::from(args.add_generation_prompt),
            ),
        ];
        context.extend(args.special_tokens.iter().cloned());
        context.extend(args.extra.iter().cloned());
        let context = ordered_map(
            context
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        );

        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|source| TokenizerError::Template { source })?;
        template.render(context).map_err(render_error)
    }

    fn message_value(&self, index: usize, message: &ChatMessage) -> Result<Value, TokenizerError> {
        let content = match &message.content {
            MessageContent::Text(text) => Value::from(text.as_str()),
            MessageContent::None => Value::from(()),
            MessageContent::Parts(parts) if self.content_as_parts => {
                Value::from(parts.iter().map(part_value).collect::<Vec<_>>())
            }
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (&part.text, part.part_type.as_str()) {
                        (Some(t), "text") => text.push_str(t),
                        _ => {
                            return Err(TokenizerError::UnsupportedContent {
                                index,
                                role: message.role.clone(),
                                part_type: part.part_type.clone(),
                            });
                        }
                    }
                }
                Value::from(text)
            }
        };
        let mut fields: Vec<(Value, Value)> = vec![
            (Value::from("role"), Value::from(message.role.as_str())),
            (Value::from("content"), content),
        ];
        fields.extend(map_entries(&message.extra));
        Ok(ordered_map(fields))
    }
}

fn part_value(part: &ContentPart) -> Value {
    let mut fields: Vec<(Value, Value)> =
        vec![(Value::from("type"), Value::from(part.part_type.as_str()))];
    if let Some(text) = &part.text {
        fields.push((Value::from("text"), Value::from(text.as_str())));
    }
    fields.extend(map_entries(&part.extra));
    ordered_map(fields)
}

/// The entries of a map value in its order; nothing for a non-map.
fn map_entries(map: &Value) -> Vec<(Value, Value)> {
    if map.kind() != minijinja::value::ValueKind::Map {
        return Vec::new();
    }
    let Ok(keys) = map.try_iter() else {
        return Vec::new();
    };
    keys.map(|key| {
        let value = map.get_item(&key).unwrap_or_default();
        (key, value)
    })
    .collect()
}

/// A map in insertion order, like the Python dicts transformers renders (the workspace enables
/// minijinja's `preserve_order`). A repeated key keeps its first position and its last value,
/// as `{**a, **b}` does.
fn ordered_map(pairs: Vec<(Value, Value)>) -> Value {
    Value::from_pairs(pairs)
}

/// A `raise_exception` surfaces with the template's own message; anything else is a render
/// error.
fn render_error(error: minijinja::Error) -> TokenizerError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return TokenizerError::TemplateRaised {
                message: raised.0.clone(),
            };
        }
        cause = e.source();
    }
    TokenizerError::Template { source: error }
}

/// Whether some `{% for x in <expr> %}` iterates over an expression mentioning `content`
/// (`message['content']`, `message.content`, `messages[0]['content']`), the mark of a template
/// written for content-part lists (vLLM detects the same thing on the parsed template).
fn iterates_over_content(source: &str) -> bool {
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let tag = &rest[start + 2..];
        let end = tag.find("%}").unwrap_or(tag.len());
        let body = tag[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if let Some(header) = body.strip_prefix("for ")
            && let Some((_, iterable)) = header.split_once(" in ")
            && iterable.contains("content")
        {
            return true;
        }
        rest = &tag[end..];
    }
    false
}

/// transformers' `{% generation %}...{% endgeneration %}` extension only records where the
/// assistant's text is; outside `return_assistant_tokens_mask` it renders its body unchanged.
/// minijinja has no such tag, so each becomes an always-true `if` block, keeping the block-tag
/// whitespace rules (`trim_blocks`, `lstrip_blocks`, `-`) that apply to it.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let open = if inner.starts_with(['-', '+']) {
            &inner[..1]
        } else {
            ""
        };
        let close = if inner.ends_with(['-', '+']) {
            &inner[inner.len() - 1..]
        } else {
            ""
        };
        let word = inner[open.len()..inner.len() - close.len()].trim();
        match word {
            "generation" => out.push_str(&format!("{{%{open} if true {close}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open} endif {close}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}
