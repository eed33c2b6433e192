//! Streaming: incremental detokenization reproduces the full decode without ever emitting a
//! broken character, and stop strings cut the stream exactly where a full-text search would.

use proptest::prelude::*;

use super::fixtures::{FIXTURES, edit_json, fixture_copy, ids, load, reference};
use crate::tokenizer::{IncrementalDecoder, StopMatcher, Tokenizer};

/// Streams `generated` and checks the invariant: every delta continues the full decode exactly
/// (so no delta has a U+FFFD the full decode lacks there) and the deltas plus `finish` are it.
fn check_stream(
    tokenizer: &Tokenizer,
    context: &[u32],
    generated: &[u32],
    skip: bool,
) -> Result<(), TestCaseError> {
    let full = tokenizer.decode(generated, skip).expect("decodes");
    let mut decoder = IncrementalDecoder::new(tokenizer, context, skip);
    let mut streamed = String::new();
    for &id in generated {
        if let Some(delta) = decoder.push(id).expect("pushes") {
            streamed.push_str(&delta);
            prop_assert!(
                full.starts_with(&streamed),
                "delta {delta:?} diverges: streamed {streamed:?}, full {full:?}"
            );
        }
    }
    streamed.push_str(&decoder.finish());
    prop_assert_eq!(streamed, full);
    Ok(())
}

#[test]
fn fixture_generations_stream_to_the_reference_texts() {
    for name in FIXTURES {
        let tokenizer = load(name);
        for prompt in reference(name)["prompts"].as_array().expect("prompts") {
            let context = ids(&prompt["input_ids"]);
            let generated = ids(&prompt["greedy"]["new_token_ids"]);
            for skip in [false, true] {
                check_stream(&tokenizer, &context, &generated, skip).expect("invariant");
                check_stream(&tokenizer, &[], &generated, skip).expect("invariant");
            }
            let field = "text_skip_special";
            let mut decoder = IncrementalDecoder::new(&tokenizer, &context, true);
            let mut text: String = generated
                .iter()
                .filter_map(|&id| decoder.push(id).expect("pushes"))
                .collect();
            text.push_str(&decoder.finish());
            assert_eq!(text, prompt["greedy"][field].as_str().expect("text"));
        }
    }
}

#[test]
fn split_emoji_and_cjk_are_held_until_complete() {
    let tokenizer = load("tiny-llama");
    let prompt = &reference("tiny-llama")["prompts"][2];
    assert_eq!(prompt["id"], "text_unicode");
    let input_ids = ids(&prompt["input_ids"]);
    let mut decoder = IncrementalDecoder::new(&tokenizer, &[], false);
    let mut held_back = 0;
    let mut streamed = String::new();
    for &id in &input_ids {
        match decoder.push(id).expect("pushes") {
            Some(delta) => {
                assert!(!delta.contains('\u{FFFD}'), "broken character in {delta:?}");
                streamed.push_str(&delta);
            }
            None => held_back += 1,
        }
    }
    streamed.push_str(&decoder.finish());
    assert_eq!(streamed, prompt["prompt_decoded"].as_str().expect("text"));
    assert!(
        held_back > 0,
        "the byte-level vocabulary splits some multi-byte characters"
    );
}

#[test]
fn a_broken_tail_becomes_replacement_characters_at_finish() {
    let tokenizer = load("tiny-llama");
    // "日" is three UTF-8 bytes; in this vocabulary, three byte tokens.
    let whole = tokenizer.encode("日", false).expect("encodes");
    assert_eq!(whole.len(), 3);
    let broken = &whole[..2];
    let mut decoder = IncrementalDecoder::new(&tokenizer, &[], false);
    for &id in broken {
        assert_eq!(
            decoder.push(id).expect("pushes"),
            None,
            "an incomplete character is held back"
        );
    }
    let tail = decoder.finish();
    assert_eq!(tail, tokenizer.decode(broken, false).expect("decodes"));
    assert!(tail.contains('\u{FFFD}'));
}

#[test]
fn clean_up_spaces_streams_to_the_cleaned_full_decode() {
    let dir = fixture_copy();
    edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c.insert("clean_up_tokenization_spaces".into(), true.into());
    });
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("loads");
    let ids = tokenizer
        .encode(
            "I do n't know . He 's here , ok ' yes ! They 're  'm 've",
            false,
        )
        .expect("encodes");
    check_stream(&tokenizer, &[], &ids, false).expect("invariant");
    proptest!(ProptestConfig::with_cases(64), |(generated in prop::collection::vec(random_id(), 0..48))| {
        check_stream(&tokenizer, &[], &generated, false)?;
    });
}

/// Ids over the whole vocabulary, weighted to the 256 byte tokens (split UTF-8) and to the
/// special tokens.
fn random_id() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..256, 4 => 0u32..509, 1 => 509u32..512]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn streaming_equals_full_decode_for_random_ids(
        generated in prop::collection::vec(random_id(), 0..64),
        context_len in 0usize..8,
        skip in any::<bool>(),
    ) {
        let tokenizer = load("tiny-llama");
        let context = tokenizer.encode("Hello there, 日本語 🙂", false).expect("encodes");
        let context = &context[context.len() - context_len.min(context.len())..];
        check_stream(&tokenizer, context, &generated, skip)?;
    }

    #[test]
    fn streaming_unicode_text_in_random_cuts(start in 0usize..73, len in 0usize..73) {
        let tokenizer = load("tiny-llama");
        let all = ids(&reference("tiny-llama")["prompts"][2]["input_ids"]);
        let start = start.min(all.len());
        let end = (start + len).min(all.len());
        check_stream(&tokenizer, &all[..start], &all[start..end], false)?;
    }

    #[test]
    fn stop_matcher_cuts_at_the_first_stop_for_any_split(
        text in "[ab😀é ]{0,40}",
        stops in prop::collection::vec("[ab😀é ]{1,4}", 1..4),
        cuts in prop::collection::vec(0usize..60, 0..12),
    ) {
        let expected = match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            Some(at) => (text[..at].to_string(), true),
            None => (text.clone(), false),
        };
        // Split the text at the given char positions.
        let chars: Vec<char> = text.chars().collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(chars.len())).collect();
        cuts.push(chars.len());
        cuts.sort_unstable();
        let mut matcher = StopMatcher::new(stops.clone());
        let mut out = String::new();
        let mut stopped = false;
        let mut from = 0;
        for cut in cuts {
            let delta: String = chars[from..cut].iter().collect();
            from = cut;
            let step = matcher.push(&delta);
            out.push_str(&step.text);
            if step.stopped {
                stopped = true;
                break;
            }
            prop_assert!(text.starts_with(&out));
        }
        if !stopped {
            let last = matcher.finish();
            out.push_str(&last.text);
            stopped = last.stopped;
        }
        prop_assert_eq!((out, stopped), expected);
    }
}
