//! Words the needles' keys are made of: "adjective-noun" pairs as in RULER's niah keys (which
//! come from the wonderwords lists). Plain, common, lowercase words, so a key is a few ordinary
//! tokens for any tokenizer and never collides with the filler text.
//!
//! Must not know: tasks, prompts or tokens.

use super::rng::SplitMix64;

pub const ADJECTIVES: [&str; 64] = [
    "ancient", "bitter", "bold", "brave", "bright", "broad", "calm", "careful", "cheerful", "clever", "cold", "crisp",
    "curious", "damp", "dark", "eager", "early", "empty", "faint", "fancy", "fierce", "fresh", "gentle", "giant",
    "glossy", "golden", "graceful", "hollow", "humble", "icy", "jolly", "kind", "large", "lazy", "lively", "lonely",
    "loud", "lucky", "mellow", "misty", "modern", "narrow", "noble", "odd", "pale", "plain", "polite", "proud",
    "quick", "quiet", "rapid", "rare", "rough", "rusty", "scarlet", "shiny", "silent", "silver", "smooth", "steady",
    "sturdy", "tidy", "velvet", "wooden",
];

pub const NOUNS: [&str; 64] = [
    "anchor", "apple", "arrow", "badge", "basket", "beacon", "blanket", "bottle", "bridge", "bucket", "button", "cabin",
    "candle", "canyon", "carpet", "castle", "cellar", "chair", "chimney", "clock", "cloud", "compass", "cottage",
    "crystal", "dragon", "drum", "engine", "falcon", "feather", "fence", "forest", "fountain", "garden", "glacier",
    "hammer", "harbor", "helmet", "island", "jacket", "kettle", "ladder", "lantern", "meadow", "mirror", "needle",
    "orchard", "otter", "pebble", "pencil", "pillow", "planet", "pocket", "quarry", "rabbit", "ribbon", "saddle",
    "shovel", "spoon", "teapot", "tunnel", "violin", "wagon", "window", "zebra",
];

/// A key such as "misty-lantern".
pub fn key(rng: &mut SplitMix64) -> String {
    format!("{}-{}", rng.pick(&ADJECTIVES), rng.pick(&NOUNS))
}

/// `n` distinct keys (n ≤ 64·64).
pub fn distinct_keys(rng: &mut SplitMix64, n: usize) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(n);
    while keys.len() < n {
        let k = key(rng);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unique_lowercase_and_keys_are_distinct() {
        for list in [&ADJECTIVES[..], &NOUNS[..]] {
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "a word is listed twice");
            assert!(list.iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase())));
        }
        let keys = distinct_keys(&mut SplitMix64::new(3), 40);
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 40);
        assert!(keys.iter().all(|k| k.split('-').count() == 2));
    }
}
