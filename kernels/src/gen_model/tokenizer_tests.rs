//! Tests of the generated tokenizer: exact vocabulary size, every id decodable, special tokens,
//! and encode→decode identity on arbitrary UTF-8.

use std::sync::OnceLock;

use proptest::prelude::*;
use tokenizers::Tokenizer;

use super::tokenizer::{build_tokenizer, learn_bpe, tokenizer_json};

/// Saves the tokenizer for `vocab_size` ids and loads it back the way users will.
fn saved_and_loaded(vocab_size: usize) -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    build_tokenizer(vocab_size)
        .unwrap()
        .save(&path, true)
        .unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn shared() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| saved_and_loaded(1000))
}

#[test]
fn vocabulary_has_exactly_vocab_size_decodable_ids() {
    // 259: no merges; 512: the fixtures' size, all merges learned; 4000: past what the corpus
    // yields, so synthetic merges fill the rest.
    for vocab_size in [259, 300, 512, 4000] {
        let tokenizer = saved_and_loaded(vocab_size);
        assert_eq!(tokenizer.get_vocab_size(true), vocab_size);
        for id in 0..vocab_size as u32 {
            let token = tokenizer.id_to_token(id);
            assert!(token.is_some(), "id {id} of {vocab_size} has no token");
            assert!(tokenizer.decode(&[id], false).is_ok(), "id {id}");
        }
        assert_eq!(tokenizer.id_to_token(vocab_size as u32), None);
        let v = vocab_size as u32;
        assert_eq!(tokenizer.token_to_id("<|endoftext|>"), Some(v - 3));
        assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(v - 2));
        assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(v - 1));
        let json = tokenizer_json(vocab_size).unwrap();
        let merges = json["model"]["merges"].as_array().unwrap().len();
        assert!(
            merges >= vocab_size - 259,
            "{merges} merges for {vocab_size}"
        );
    }
}

#[test]
fn byte_tokens_match_the_fixture_alphabet_order() {
    let tokenizer = saved_and_loaded(300);
    // First, last and a few in between of the fixtures' byte tokens.
    for (id, token) in [
        (0, "!"),
        (13, "."),
        (64, "a"),
        (94, "¡"),
        (220, "Ġ"),
        (255, "Ń"),
    ] {
        assert_eq!(tokenizer.id_to_token(id).as_deref(), Some(token), "id {id}");
    }
}

#[test]
fn learned_merges_are_english_word_pieces() {
    let bpe = learn_bpe(600).unwrap();
    assert_eq!(bpe.vocab.len(), 600);
    for piece in ["Ġthe", "Ġand", "Ġof"] {
        assert!(bpe.vocab.iter().any(|t| t == piece), "{piece} not learned");
    }
    let ids = shared().encode("the nation", false).unwrap();
    assert!(ids.get_ids().len() <= 3, "{:?}", ids.get_tokens());
}

#[test]
fn merges_are_deterministic() {
    assert_eq!(tokenizer_json(3000).unwrap(), tokenizer_json(3000).unwrap());
}

#[test]
fn chat_markup_encodes_to_special_ids_and_nothing_is_added() {
    let tokenizer = shared();
    let text = "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n";
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    assert_eq!(ids, tokenizer.encode(text, false).unwrap().get_ids());
    assert_eq!(ids.first(), Some(&998));
    assert_eq!(ids.iter().filter(|&&id| id == 999).count(), 1);
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    assert_eq!(
        tokenizer.decode(&ids, true).unwrap(),
        "user\nHello!\nassistant\n"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_decode_is_identity(text in any::<String>()) {
        let tokenizer = shared();
        let encoding = tokenizer.encode(text.as_str(), false).unwrap();
        prop_assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), text);
    }

    #[test]
    fn english_like_text_round_trips(text in "[ a-zA-Z0-9.,;:!?'\"()\\n\\t-]{0,200}") {
        let tokenizer = shared();
        let encoding = tokenizer.encode(text.as_str(), false).unwrap();
        prop_assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), text);
    }
}
