//! Stop strings over streamed text, with hold-back.
//!
//! Owns: deciding which part of the detokenised text may be shown now. Text that could still
//! turn out to be the start of a stop string is held back until it is known not to be one; when
//! a stop string completes, the text before it is released and generation stops. The stop
//! string itself is never emitted (OpenAI / vLLM without `include_stop_str_in_output`).
//!
//! Must not know: tokens or tokenizers (the detokeniser hands us whole UTF-8 characters), nor
//! stop *tokens* (the engine checks those on ids).
//!
//! Which stop wins when several match: the one that *ends* first (then the one that starts
//! first). That is what a character-by-character stream would see, so the result does not
//! depend on how the text was split into deltas.

/// What `push` allows the caller to show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text safe to stream now (possibly empty).
    pub emit: String,
    /// A stop string completed: `emit` is the last text of this sequence.
    pub stopped: bool,
    /// The stop string that completed (vLLM's `stop_reason`), when `stopped` by this push.
    pub matched: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: always a proper prefix of some stop string (or empty)
    /// between calls.
    held: String,
    stopped: bool,
}

impl StopStringMatcher {
    /// Empty stop strings are ignored (they would stop before any text).
    pub fn new(stops: Vec<String>) -> StopStringMatcher {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopStringMatcher {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly decoded text. After a stop, further text is ignored.
    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                emit: String::new(),
                stopped: true,
                matched: None,
            };
        }
        self.held.push_str(delta);
        if let Some((start, stop)) = self.first_completed_stop() {
            self.stopped = true;
            let matched = Some(self.stops[stop].clone());
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(start);
            return StopStep {
                emit,
                stopped: true,
                matched,
            };
        }
        let keep_from = self.held.len() - self.longest_partial_suffix();
        let rest = self.held.split_off(keep_from);
        let emit = std::mem::replace(&mut self.held, rest);
        StopStep {
            emit,
            stopped: false,
            matched: None,
        }
    }

    /// Generation ended for another reason: release what was held back.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset where the earliest-ending complete stop string starts, and its index.
    fn first_completed_stop(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                self.held
                    .find(s.as_str())
                    .map(|start| (start + s.len(), start, k))
            })
            .min()
            .map(|(_, start, k)| (start, k))
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string.
    /// Suffixes start only at char boundaries, so held text never splits a character.
    fn longest_partial_suffix(&self) -> usize {
        let max_len = self.stops.iter().map(String::len).max().unwrap_or(0);
        let text = self.held.as_str();
        let earliest = text.len().saturating_sub(max_len.saturating_sub(1));
        text.char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= earliest)
            .find(|&i| {
                let suffix = &text[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            })
            .map_or(0, |i| text.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopStringMatcher {
        StopStringMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    /// Feeds `deltas`, returns (everything emitted incl. flush, stopped).
    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for d in deltas {
            let step = m.push(d);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    fn step(emit: &str, stopped: bool, matched: Option<&str>) -> StopStep {
        StopStep {
            emit: emit.into(),
            stopped,
            matched: matched.map(String::from),
        }
    }

    #[test]
    fn stop_split_across_many_deltas_is_caught_and_not_emitted() {
        let mut m = matcher(&["</end>"]);
        assert_eq!(m.push("Hello <"), step("Hello ", false, None));
        assert_eq!(m.push("/e"), step("", false, None));
        assert_eq!(m.push("n"), step("", false, None));
        assert_eq!(m.push("d> tail"), step("", true, Some("</end>")));
        assert!(m.is_stopped());
        assert_eq!(m.push("more"), step("", true, None));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn text_before_the_stop_in_the_same_delta_is_emitted() {
        assert_eq!(run(&["STOP"], &["abc STOP def"]), ("abc ".into(), true));
    }

    #[test]
    fn partial_match_that_is_not_a_stop_is_released_later() {
        let mut m = matcher(&["\n\n"]);
        assert_eq!(m.push("line\n").emit, "line");
        assert_eq!(m.push("next").emit, "\nnext");
        assert_eq!(m.push("\n").emit, "");
        assert_eq!(m.flush(), "\n");
    }

    #[test]
    fn multiple_stop_strings_any_can_stop() {
        assert_eq!(run(&["foo", "bar"], &["x b", "ar y"]), ("x ".into(), true));
        assert_eq!(run(&["foo", "bar"], &["x f", "oo"]), ("x ".into(), true));
        assert_eq!(
            run(&["foo", "bar"], &["x fob", "a"]),
            ("x foba".into(), false)
        );
    }

    #[test]
    fn overlapping_prefixes_hold_the_longest_possible_start() {
        // "abab" held as "aba" could still become "abac": the whole "ab" prefix stays held.
        let mut m = matcher(&["abac"]);
        assert_eq!(m.push("xaba").emit, "x");
        assert_eq!(m.push("b").emit, "ab");
        assert_eq!(m.push("ac").emit, "");
        assert!(m.is_stopped());
    }

    #[test]
    fn the_matched_stop_string_is_reported() {
        let mut m = matcher(&["foo", "bar"]);
        assert_eq!(m.push("xx bar foo"), step("xx ", true, Some("bar")));
    }

    #[test]
    fn stop_that_ends_first_wins_however_the_text_is_split() {
        // "bc" completes before "abcd": a character stream stops after "a".
        let stops = ["abcd", "bc"];
        assert_eq!(run(&stops, &["abcd"]), ("a".into(), true));
        assert_eq!(run(&stops, &["a", "b", "c", "d"]), ("a".into(), true));
        assert_eq!(run(&stops, &["ab", "cd"]), ("a".into(), true));
    }

    #[test]
    fn multi_byte_characters_are_never_split() {
        // 'é' (c3 a9) and 'è' (c3 a8) share their first byte; a stop on "é!" must not hold 'è'.
        let mut m = matcher(&["é!"]);
        assert_eq!(m.push("café").emit, "caf");
        assert_eq!(m.push("è").emit, "éè");
        assert_eq!(m.push("é").emit, "");
        assert_eq!(m.push("!").emit, "");
        assert!(m.is_stopped());
        assert_eq!(
            run(&["🙂x"], &["ok 🙂", "🙂", "x!"]),
            ("ok 🙂".into(), true)
        );
    }

    #[test]
    fn no_stop_strings_emit_everything_immediately() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("all of it").emit, "all of it");
        let mut m = matcher(&[""]);
        assert_eq!(
            m.push("empty stops are ignored").emit,
            "empty stops are ignored"
        );
    }

    #[test]
    fn random_splits_give_the_same_result_as_one_delta() {
        let text = "The end is near: <|im_end|> but not here <|im_start|> é🙂 done";
        let stops = ["<|im_end|>", "<|im", "near:!"];
        let whole = run(&stops, &[text]);
        let chars: Vec<char> = text.chars().collect();
        for step in 1..7 {
            let deltas: Vec<String> = chars.chunks(step).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
            assert_eq!(
                run(&stops, &refs),
                whole,
                "split into chunks of {step} chars"
            );
        }
        assert_eq!(whole, ("The end is near: ".into(), true));
    }
}
