//! Stop strings over streamed text (OpenAI semantics: generation ends at the first stop
//! string, which is not part of the output).

/// What [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopResult {
    /// Text safe to send now; a suffix that could begin a stop string is held back.
    pub emit: String,
    /// A stop string was found: `emit` ends right before it and generation should end.
    pub stopped: bool,
}

/// Finds stop strings in text that arrives in pieces, holding back just enough text that a
/// stop string split across pieces is never partly sent.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Held-back tail: always shorter than the longest stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        Self {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Adds streamed text. After a stop, everything further is dropped.
    pub fn push(&mut self, text: &str) -> StopResult {
        if self.stopped {
            return StopResult {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopResult {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        // Earliest stop string wins: everything before it is output, nothing after.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            self.stopped = true;
            return StopResult {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let hold_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(hold_from);
        let emit = std::mem::replace(&mut self.held, rest);
        StopResult {
            emit,
            stopped: false,
        }
    }

    /// Releases the held-back text when generation ends without a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, String) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.emit);
            if r.stopped {
                return (out, true, String::new());
            }
        }
        let tail = m.finish();
        (out, false, tail)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(
            run(&["STOP"], &["hello ST", "O", "P world"]),
            ("hello ".into(), true, String::new())
        );
        assert_eq!(
            run(&["\n\n"], &["a\n", "\nb"]),
            ("a".into(), true, String::new())
        );
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let mut m = StopMatcher::new(["</s>"]);
        assert_eq!(
            m.push("x <"),
            StopResult {
                emit: "x ".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("/"),
            StopResult {
                emit: "".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("b>"),
            StopResult {
                emit: "</b>".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push(" <"),
            StopResult {
                emit: " ".into(),
                stopped: false
            }
        );
        assert_eq!(m.finish(), "<");
    }

    #[test]
    fn released_on_finish() {
        assert_eq!(
            run(&["ABC"], &["xx", "AB"]),
            ("xx".into(), false, "AB".into())
        );
    }

    #[test]
    fn earliest_of_several_and_multibyte() {
        assert_eq!(
            run(&["world", "lo w"], &["hello world"]),
            ("hel".into(), true, String::new())
        );
        assert_eq!(
            run(&["é!"], &["caf", "é", "!x"]),
            ("caf".into(), true, String::new())
        );
        assert_eq!(
            run(&["日本"], &["今日", "は日"]),
            ("今日は".into(), false, "日".into())
        );
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false, String::new()));
        assert_eq!(run(&[""], &["a"]), ("a".into(), false, String::new()));
    }

    #[test]
    fn after_stop_nothing() {
        let mut m = StopMatcher::new(["x"]);
        assert!(m.push("ax").stopped);
        assert_eq!(
            m.push("more"),
            StopResult {
                emit: String::new(),
                stopped: true
            }
        );
        assert!(m.is_stopped());
    }
}
