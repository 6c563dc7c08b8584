//! What a sample's answer is and how a model's output is judged against it.
//!
//! Exact match: a number answer is right when the first number in the output (a maximal run of
//! digits) is exactly it — "1234567." is right, "12345678" or a distractor's value first is
//! wrong; a variable-tracking answer is right when the set of variable names in the output
//! (maximal runs of exactly five capital letters) is exactly the chain's, in any order, with
//! nothing missing and nothing extra. RULER's own score (`string_match_all`: the fraction of
//! expected strings found anywhere in the output, ignoring case) is kept beside it, so numbers
//! compare with published RULER tables.
//!
//! Must not know: prompts, tokens or models.

use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A needle's value, as digits.
    Number(String),
    /// Every variable of a chain (their order does not matter).
    Variables(Vec<String>),
}

/// Length of a variable name (RULER's variable tracking uses five capital letters).
pub const VARIABLE_NAME_LEN: usize = 5;

impl Answer {
    pub fn is_correct(&self, output: &str) -> bool {
        match self {
            Answer::Number(expected) => first_number(output) == Some(expected.as_str()),
            Answer::Variables(expected) => {
                let found: BTreeSet<&str> = variable_names(output).collect();
                found == expected.iter().map(String::as_str).collect()
            }
        }
    }

    /// RULER's `string_match_all`: the fraction of expected strings that occur in the output,
    /// case-insensitively.
    pub fn ruler_score(&self, output: &str) -> f64 {
        let output = output.to_lowercase();
        let refs: Vec<&str> = match self {
            Answer::Number(n) => vec![n.as_str()],
            Answer::Variables(v) => v.iter().map(String::as_str).collect(),
        };
        refs.iter().filter(|r| output.contains(&r.to_lowercase())).count() as f64 / refs.len() as f64
    }

    /// For reports: "4829113" or "QXWTR JNBKA …" in chain order.
    pub fn expected(&self) -> String {
        match self {
            Answer::Number(n) => n.clone(),
            Answer::Variables(v) => v.join(" "),
        }
    }
}

/// The first maximal run of ASCII digits.
fn first_number(text: &str) -> Option<&str> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let len = text[start..].find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len() - start);
    Some(&text[start..start + len])
}

/// Maximal runs of ASCII capitals exactly [`VARIABLE_NAME_LEN`] long ("VAR" and "ABCDEF" are
/// not names).
fn variable_names(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_uppercase()).filter(|w| w.len() == VARIABLE_NAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_right_only_when_the_first_number_is_exactly_it() {
        let a = Answer::Number("4829113".into());
        for right in [" 4829113.", "4829113", " is: 4829113, I think 123", "\n4829113\n"] {
            assert!(a.is_correct(right), "{right:?}");
        }
        for wrong in ["", " 48291130.", " 482911", " 1234567 or 4829113", " four million", " 4 829 113"] {
            assert!(!a.is_correct(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn variables_must_be_the_exact_set_in_any_order() {
        let a = Answer::Variables(["QXWTR", "JNBKA", "PLMOI"].map(String::from).to_vec());
        assert!(a.is_correct(" QXWTR, JNBKA, PLMOI"));
        assert!(a.is_correct(" VAR PLMOI, VAR QXWTR and JNBKA. QXWTR again"));
        assert!(!a.is_correct(" QXWTR, JNBKA"), "one missing");
        assert!(!a.is_correct(" QXWTR, JNBKA, PLMOI, ZZZZZ"), "one extra");
        assert!(!a.is_correct(" QXWTRJNBKAPLMOI"), "run together is not three names");
        assert!(!a.is_correct(" qxwtr, jnbka, plmoi"), "names are capitals");
    }

    #[test]
    fn ruler_score_is_the_fraction_found_ignoring_case_and_extras() {
        let a = Answer::Variables(["QXWTR", "JNBKA", "PLMOI", "AAAAA"].map(String::from).to_vec());
        assert_eq!(a.ruler_score("qxwtr JNBKA zzzzz"), 0.5);
        assert_eq!(Answer::Number("42".into()).ruler_score("the 1420"), 1.0);
        assert_eq!(Answer::Number("42".into()).ruler_score("none"), 0.0);
        assert_eq!(a.expected(), "QXWTR JNBKA PLMOI AAAAA");
    }
}
