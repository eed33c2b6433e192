//! Stop strings over a stream of text deltas.
//!
//! [`StopMatcher`] owns the held-back tail: text that could still turn out to be the start of a
//! stop string is not released until it cannot. It works on decoded text, not ids, so a stop
//! string split across tokens (or across deltas of any size) is found. It does not know about
//! EOS ids or length limits; the caller calls [`StopMatcher::finish`] when those end a sequence.

/// What one delta releases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to send to the client now.
    pub text: String,
    /// A stop string completed: `text` is everything before it, and nothing more will come.
    pub stopped: bool,
}

/// Matches stop strings across deltas. One per sequence.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would stop before the first character).
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds a delta; returns what can be released. After a stop, everything is swallowed.
    pub fn push(&mut self, delta: &str) -> StopOutput {
        if self.stopped {
            return StopOutput {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(delta);

        // All text released earlier was checked to hold no stop.
        if let Some(at) = self.first_stop() {
            // A longer stop string that starts earlier and may still complete comes first in
            // the text if it does: hold from its start until it completes or cannot.
            match self.pending_stop_before(at) {
                None => {
                    self.held.truncate(at);
                    self.stopped = true;
                    return StopOutput {
                        text: std::mem::take(&mut self.held),
                        stopped: true,
                    };
                }
                Some(start) => {
                    let rest = self.held.split_off(start);
                    return StopOutput {
                        text: std::mem::replace(&mut self.held, rest),
                        stopped: false,
                    };
                }
            }
        }

        let keep = self.longest_suffix_starting_a_stop();
        let rest = self.held.split_off(self.held.len() - keep);
        StopOutput {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Releases the held-back text when the sequence ends for another reason. A stop string
    /// that completed while a longer one was still possible cuts the text here (`stopped`).
    pub fn finish(&mut self) -> StopOutput {
        let first_stop = self.first_stop();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            self.stopped = true;
        }
        StopOutput {
            text: std::mem::take(&mut self.held),
            stopped: first_stop.is_some(),
        }
    }

    /// Where the earliest occurrence of any stop string in the held text starts.
    fn first_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
    }

    /// The earliest start before `at` of a held suffix that is a proper prefix of a stop string
    /// (a stop that may still complete there).
    fn pending_stop_before(&self, at: usize) -> Option<usize> {
        (0..at).find(|&start| {
            self.held.is_char_boundary(start) && {
                let suffix = &self.held[start..];
                self.stops
                    .iter()
                    .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            }
        })
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string.
    fn longest_suffix_starting_a_stop(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let max_keep = self.held.len().min(longest_stop.saturating_sub(1));
        (1..=max_keep)
            .rev()
            .find(|&k| {
                let start = self.held.len() - k;
                self.held.is_char_boundary(start) && {
                    let suffix = &self.held[start..];
                    self.stops.iter().any(|s| s.starts_with(suffix))
                }
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for delta in deltas {
            let step = matcher.push(delta);
            out.push_str(&step.text);
            if step.stopped {
                return (out, true);
            }
        }
        let last = matcher.finish();
        out.push_str(&last.text);
        (out, last.stopped)
    }

    #[test]
    fn a_longer_stop_starting_earlier_wins_over_a_completed_shorter_one() {
        // "b" completes first, but "éb " starts earlier: it is the first stop in the text.
        assert_eq!(run(&["b", "éb "], &["éb", " more"]), (String::new(), true));
        // If the longer one cannot complete, the shorter one cuts where it is.
        assert_eq!(run(&["b", "éb "], &["éb", "x"]), ("é".to_string(), true));
        // And so it does when the sequence ends first.
        assert_eq!(run(&["b", "éb "], &["éb"]), ("é".to_string(), true));
    }

    #[test]
    fn stop_split_across_deltas_is_cut_and_never_emitted() {
        assert_eq!(
            run(&["</s>"], &["Hello <", "/", "s> more"]),
            ("Hello ".to_string(), true)
        );
    }

    #[test]
    fn partial_stop_is_held_back_then_released() {
        let mut matcher = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(matcher.push("abc ST").text, "abc ");
        assert_eq!(matcher.push("OP?").text, "");
        assert!(matcher.is_stopped());

        let mut matcher = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(matcher.push("abc ST").text, "abc ");
        assert_eq!(matcher.push("ART").text, "START");
        assert_eq!(matcher.push(" S").text, " ");
        assert_eq!(matcher.finish().text, "S");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(
            run(&["world", "lo w"], &["hello world"]),
            ("hel".to_string(), true)
        );
    }

    #[test]
    fn multibyte_text_and_stops() {
        assert_eq!(
            run(&["🙂!"], &["日本", "語 \u{1F642}", "!x"]),
            ("日本語 ".to_string(), true)
        );
        assert_eq!(run(&["é"], &["caf", "e"]), ("cafe".to_string(), false));
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(run(&[""], &["abc"]), ("abc".to_string(), false));
    }
}
