//! The transformers reference fixtures: chat renderings, token ids, decoded texts, special
//! tokens, and load errors that name the file.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::tokenizer::{ChatMessage, Tokenizer, TokenizerError};

pub(super) const FIXTURES: [&str; 2] = ["tiny-llama", "tiny-llama-bf16"];

pub(super) fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub(super) fn load(name: &str) -> Tokenizer {
    Tokenizer::from_dir(&fixture_dir(name)).expect("fixture tokenizer loads")
}

pub(super) fn reference(name: &str) -> Json {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).expect("reference.json is readable");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

pub(super) fn ids(value: &Json) -> Vec<u32> {
    serde_json::from_value(value.clone()).expect("a list of token ids")
}

/// A copy of a fixture directory's tokenizer files, to edit in a test.
pub(super) fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "config.json",
    ] {
        std::fs::copy(fixture_dir("tiny-llama").join(file), dir.path().join(file)).expect("copy");
    }
    dir
}

pub(super) fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Json>)) {
    let text = std::fs::read_to_string(path).expect("readable");
    let mut json: Json = serde_json::from_str(&text).expect("JSON");
    edit(json.as_object_mut().expect("an object"));
    std::fs::write(
        path,
        serde_json::to_string_pretty(&json).expect("serializable"),
    )
    .expect("write");
}

#[test]
fn every_prompt_matches_transformers() {
    for name in FIXTURES {
        let tokenizer = load(name);
        let reference = reference(name);
        let prompts = reference["prompts"].as_array().expect("prompts");
        assert_eq!(prompts.len(), 7);
        for prompt in prompts {
            let id = prompt["id"].as_str().expect("id");
            let input_ids = ids(&prompt["input_ids"]);
            match prompt["kind"].as_str() {
                Some("chat") => {
                    let messages: Vec<ChatMessage> =
                        serde_json::from_value(prompt["messages"].clone()).expect("messages");
                    let rendered = tokenizer
                        .apply_chat_template(&messages, true)
                        .expect("renders");
                    assert_eq!(
                        rendered,
                        prompt["rendered_prompt"].as_str().expect("rendered"),
                        "{name}/{id}"
                    );
                    assert_eq!(
                        tokenizer.encode(&rendered, false).expect("encodes"),
                        input_ids,
                        "{name}/{id}"
                    );
                }
                Some("text") => {
                    let text = prompt["text"].as_str().expect("text");
                    assert_eq!(
                        tokenizer.encode(text, false).expect("encodes"),
                        input_ids,
                        "{name}/{id}"
                    );
                    // The fixture adds nothing automatically.
                    assert_eq!(
                        tokenizer.encode(text, true).expect("encodes"),
                        input_ids,
                        "{name}/{id}"
                    );
                }
                other => panic!("unknown prompt kind {other:?}"),
            }
            assert_eq!(
                input_ids.len() as u64,
                prompt["num_tokens"].as_u64().expect("num_tokens")
            );
            assert_eq!(
                tokenizer.decode(&input_ids, false).expect("decodes"),
                prompt["prompt_decoded"].as_str().expect("prompt_decoded"),
                "{name}/{id}"
            );
            let new_ids = ids(&prompt["greedy"]["new_token_ids"]);
            assert_eq!(
                tokenizer.decode(&new_ids, false).expect("decodes"),
                prompt["greedy"]["text"].as_str().expect("text"),
                "{name}/{id}"
            );
            assert_eq!(
                tokenizer.decode(&new_ids, true).expect("decodes"),
                prompt["greedy"]["text_skip_special"]
                    .as_str()
                    .expect("text_skip_special"),
                "{name}/{id}"
            );
        }
    }
}

#[test]
fn special_tokens_and_vocabulary() {
    let tokenizer = load("tiny-llama");
    assert_eq!(tokenizer.eos_token_ids(), &[511, 509]);
    assert_eq!(tokenizer.bos_token(), Some("<|endoftext|>"));
    assert_eq!(tokenizer.eos_token(), Some("<|im_end|>"));
    assert_eq!(tokenizer.vocab_size(), 512);
    for (id, token) in [
        (509, "<|endoftext|>"),
        (510, "<|im_start|>"),
        (511, "<|im_end|>"),
    ] {
        assert!(tokenizer.is_special(id));
        assert_eq!(tokenizer.token_to_id(token), Some(id));
        assert_eq!(tokenizer.id_to_token(id).as_deref(), Some(token));
    }
    assert!(!tokenizer.is_special(0) && !tokenizer.is_special(508));
    assert_eq!(tokenizer.id_to_token(512), None);
    assert_eq!(
        tokenizer.encode("<|im_start|>", false).expect("encodes"),
        vec![510]
    );
}

#[test]
fn tokenizer_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<crate::tokenizer::ChatTemplate>();
}

#[test]
fn eos_set_is_generation_config_first_then_tokenizer_eos() {
    let dir = fixture_copy();
    edit_json(&dir.path().join("generation_config.json"), |g| {
        g.insert("eos_token_id".into(), 509.into());
    });
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    assert_eq!(tokenizer.eos_token_ids(), &[509, 511]);

    // Without generation_config.json, config.json's eos_token_id (511) is the fallback.
    std::fs::remove_file(dir.path().join("generation_config.json")).expect("remove");
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    assert_eq!(tokenizer.eos_token_ids(), &[511]);
}

#[test]
fn token_objects_add_bos_and_template_lists_are_understood() {
    let dir = fixture_copy();
    edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c.insert(
            "bos_token".into(),
            serde_json::json!({"__type": "AddedToken", "content": "<|endoftext|>"}),
        );
        c.insert("add_bos_token".into(), true.into());
        c.insert(
            "chat_template".into(),
            serde_json::json!([
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}"},
            ]),
        );
    });
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    assert_eq!(tokenizer.bos_token(), Some("<|endoftext|>"));
    let plain = tokenizer.encode("Hi", false).expect("encodes");
    let with_bos = tokenizer.encode("Hi", true).expect("encodes");
    assert_eq!(with_bos[0], 509);
    assert_eq!(&with_bos[1..], &plain[..]);
    let rendered = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
        .expect("renders");
    assert_eq!(rendered, "<|endoftext|>Hi");

    // A chat_template.jinja file beside the config wins over the config's template.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "J:{{ messages[0].content }}\n",
    )
    .expect("write");
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    let rendered = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
        .expect("renders");
    assert_eq!(
        rendered, "J:Hi",
        "Jinja drops one trailing newline of the template"
    );
}

#[test]
fn no_chat_template_is_an_error_not_a_guess() {
    let dir = fixture_copy();
    edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c.remove("chat_template");
    });
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    assert!(tokenizer.chat_template().is_none());
    let err = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate), "{err:?}");
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    match &err {
        TokenizerError::Load { path, .. } => assert_eq!(path, &dir.path().join("tokenizer.json")),
        other => panic!("expected Load, got {other:?}"),
    }
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn corrupt_json_names_the_file() {
    let dir = fixture_copy();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .expect("write");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Json { path, .. } if path.ends_with("tokenizer.json")),
        "{err:?}"
    );

    let dir = fixture_copy();
    std::fs::write(dir.path().join("tokenizer_config.json"), "not json").expect("write");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Json { path, .. } if path.ends_with("tokenizer_config.json")),
        "{err:?}"
    );
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
}

#[test]
fn a_bad_field_names_the_file_field_and_value() {
    let dir = fixture_copy();
    edit_json(&dir.path().join("generation_config.json"), |g| {
        g.insert("eos_token_id".into(), "eos".into());
    });
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    match &err {
        TokenizerError::Field {
            path, field, value, ..
        } => {
            assert!(path.ends_with("generation_config.json"));
            assert_eq!(field, "eos_token_id");
            assert_eq!(value, "\"eos\"");
        }
        other => panic!("expected Field, got {other:?}"),
    }

    let dir = fixture_copy();
    edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c.insert("chat_template".into(), "{% for m in messages %}".into());
    });
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::TemplateSyntax { origin, .. } if origin.ends_with("tokenizer_config.json")),
        "{err:?}"
    );
}

#[test]
fn clean_up_tokenization_spaces_matches_transformers() {
    let dir = fixture_copy();
    edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c.insert("clean_up_tokenization_spaces".into(), true.into());
    });
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    let text = "I do n't know . He 's here , ok ' yes !";
    let ids = tokenizer.encode(text, false).expect("encodes");
    assert_eq!(
        tokenizer.decode(&ids, false).expect("decodes"),
        "I don't know. He's here, ok'yes!"
    );
}
