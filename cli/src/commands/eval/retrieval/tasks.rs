//! The three RULER-style tasks as text: what a sample says (instructions, needles, question,
//! answer prefix) and what its answer is, drawn from a seed. Wording follows RULER's
//! templates for base models (`scripts/data/synthetic/constants.py`, with its singular
//! rewrite when one value is asked for); the question comes after the context, and the answer
//! prefix is part of the prompt so greedy decoding starts with the answer.
//!
//! - passkey = RULER `niah_single_1`: one needle "One of the special magic numbers for
//!   {adjective-noun} is: {7 digits}." at the requested depth; the answer is the number.
//! - multikey = RULER `niah_multikey_1`: the same needle plus three distractor needles (other
//!   keys, other numbers) at random depths; one key is asked, the answer is its number.
//! - vartrack = RULER `vt` (one chain, four hops): "VAR QXWTR = 48291." at the requested depth,
//!   then "VAR JNBKA = VAR QXWTR." and so on, each later in the text, at random depths between
//!   the first and the end; the answer is all five names. As in RULER, the prompt opens with a
//!   one-shot example: a short instance of the task (another chain in ten filler sentences)
//!   with its answer.
//!
//! Owns: wording, keys, values and where each needle goes (as a fraction of the haystack).
//! Must not know: tokens (placing needles among sentences is `layout`), models or scoring.

use std::fmt;
use std::str::FromStr;

use super::answer::{Answer, VARIABLE_NAME_LEN};
use super::haystack::FILLER;
use super::rng::{derive_seed, SplitMix64};
use super::words;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Passkey,
    Multikey,
    Vartrack,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Passkey, Task::Multikey, Task::Vartrack];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Passkey => "passkey",
            Task::Multikey => "multikey",
            Task::Vartrack => "vartrack",
        }
    }

    /// Tokens generated per answer. A 7-digit number is at most 8 tokens with a tokenizer that
    /// splits digits, plus a space and a period; five variable names with separators fit in 30
    /// (RULER's `tokens_to_generate` for vt). RULER allows 128 for niah; greedy answers here
    /// are one number, so a short budget changes no verdict and saves decode steps.
    pub fn max_tokens(self) -> usize {
        match self {
            Task::Passkey | Task::Multikey => 16,
            Task::Vartrack => 30,
        }
    }

    /// Distinguishes tasks in derived seeds.
    fn seed_part(self) -> u64 {
        self as u64 + 1
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task `{s}` (expected passkey, multikey or vartrack)"))
    }
}

/// A sentence hidden in the haystack and where it goes: `depth` is a fraction of the haystack's
/// tokens (0 = before the first sentence, 1 = after the last).
#[derive(Clone, Debug, PartialEq)]
pub struct Needle {
    pub text: String,
    pub depth: f64,
}

/// Which sample this is: the grid cell and its index in the cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleId {
    pub task: Task,
    pub context_len: usize,
    pub depth: f64,
    pub index: usize,
}

/// One generated sample, before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub id: SampleId,
    /// The instructions that open the prompt.
    pub header: String,
    /// Between the header and the first haystack sentence.
    pub context_opening: &'static str,
    /// `needles[0]` is the one the question is about, at the requested depth; the others are
    /// distractors (multikey) or the rest of the chain (vartrack).
    pub needles: Vec<Needle>,
    /// After the context, starting with its separator.
    pub question: String,
    /// After the question: the words the answer completes.
    pub answer_prefix: String,
    pub answer: Answer,
    /// Index of the first haystack sentence (any; the haystack cycles).
    pub haystack_start: u64,
}

const NIAH_HEADER: &str =
    "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about the number afterwards.";
const VT_HEADER: &str = "Memorize and track the chain(s) of variable assignment hidden in the following text.";
/// RULER's `vt` default: one chain of four hops, so five variables.
pub const VT_HOPS: usize = 4;
/// RULER's `niah_multikey_1`: four keys, one asked.
pub const MULTIKEY_NEEDLES: usize = 4;

/// The sample `id` under `seed`; the same inputs give the same sample on every machine.
pub fn generate(seed: u64, id: SampleId) -> Sample {
    let mut rng = SplitMix64::new(derive_seed(
        seed,
        &[id.task.seed_part(), id.context_len as u64, id.depth.to_bits(), id.index as u64],
    ));
    let haystack_start = rng.next_u64();
    match id.task {
        Task::Passkey | Task::Multikey => {
            let count = if id.task == Task::Passkey { 1 } else { MULTIKEY_NEEDLES };
            let keys = words::distinct_keys(&mut rng, count);
            let mut values: Vec<String> = Vec::with_capacity(count);
            while values.len() < count {
                let v = rng.between(1_000_000, 9_999_999).to_string();
                if !values.contains(&v) {
                    values.push(v);
                }
            }
            let needles = keys
                .iter()
                .zip(&values)
                .enumerate()
                .map(|(i, (key, value))| Needle {
                    text: format!("One of the special magic numbers for {key} is: {value}."),
                    depth: if i == 0 { id.depth } else { rng.unit() },
                })
                .collect();
            let key = &keys[0];
            Sample {
                id,
                header: NIAH_HEADER.into(),
                context_opening: "\n",
                needles,
                question: format!("\nWhat is the special magic number for {key} mentioned in the provided text?"),
                answer_prefix: format!(" The special magic number for {key} mentioned in the provided text is"),
                answer: Answer::Number(values[0].clone()),
                haystack_start,
            }
        }
        Task::Vartrack => {
            // RULER prepends a one-shot demonstration (`add_fewshot`): a short filled-in
            // instance of the same task, with its answer, then the real one.
            let example = vartrack_example(&mut rng);
            let chain = Chain::draw(&mut rng);
            // Each hop after the one it copies: later hops at sorted random depths in
            // [depth, 1], so the chain reads forward through the text.
            let mut hop_depths: Vec<f64> = (0..VT_HOPS).map(|_| id.depth + (1.0 - id.depth) * rng.unit()).collect();
            hop_depths.sort_by(f64::total_cmp);
            let needles = chain
                .statements()
                .into_iter()
                .zip(std::iter::once(id.depth).chain(hop_depths))
                .map(|(text, depth)| Needle { text, depth })
                .collect();
            Sample {
                id,
                header: format!("{example}{VT_HEADER}"),
                context_opening: "\n\n",
                needles,
                question: chain.question(),
                answer_prefix: chain.answer_prefix(),
                answer: Answer::Variables(chain.names),
                haystack_start,
            }
        }
    }
}

/// One variable chain: a value, then each name assigned the previous one.
struct Chain {
    names: Vec<String>,
    value: String,
}

impl Chain {
    /// [`VT_HOPS`] + 1 distinct names of five capitals and a five-digit value.
    fn draw(rng: &mut SplitMix64) -> Self {
        let mut names: Vec<String> = Vec::with_capacity(VT_HOPS + 1);
        while names.len() < VT_HOPS + 1 {
            let name: String = (0..VARIABLE_NAME_LEN).map(|_| (b'A' + rng.below(26) as u8) as char).collect();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Self { names, value: rng.between(10_000, 99_999).to_string() }
    }

    /// "VAR QXWTR = 48291.", then "VAR JNBKA = VAR QXWTR." and so on.
    fn statements(&self) -> Vec<String> {
        let mut out = vec![format!("VAR {} = {}.", self.names[0], self.value)];
        out.extend(self.names.windows(2).map(|w| format!("VAR {} = VAR {}.", w[1], w[0])));
        out
    }

    fn question(&self) -> String {
        format!("\nQuestion: Find all variables that are assigned the value {} in the text above.", self.value)
    }

    fn answer_prefix(&self) -> String {
        format!(
            " Answer: According to the chain(s) of variable assignment in the text above, {} variables are assigned the value {}, they are:",
            self.names.len(),
            self.value
        )
    }
}

/// Filler sentences in the one-shot example's context.
const EXAMPLE_SENTENCES: usize = 10;

/// A complete small vartrack instance and its answer (names separated by spaces, as RULER
/// writes its example's outputs), ending with a newline before the real instance.
fn vartrack_example(rng: &mut SplitMix64) -> String {
    let chain = Chain::draw(rng);
    let mut units: Vec<String> = (0..EXAMPLE_SENTENCES).map(|i| FILLER[i % FILLER.len()].to_string()).collect();
    let mut slots: Vec<usize> = (0..chain.names.len()).map(|_| rng.below(EXAMPLE_SENTENCES as u64 + 1) as usize).collect();
    slots.sort_unstable();
    // Inserting from the back keeps the earlier slots' indices valid and the chain in order.
    for (slot, statement) in slots.into_iter().zip(chain.statements()).rev() {
        units.insert(slot, statement);
    }
    format!("{VT_HEADER}\n\n{}{}{} {}\n", units.join(" "), chain.question(), chain.answer_prefix(), chain.names.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(task: Task, depth: f64, index: usize) -> SampleId {
        SampleId { task, context_len: 1024, depth, index }
    }

    #[test]
    fn the_same_seed_gives_the_same_sample_and_any_change_another() {
        for task in Task::ALL {
            let a = generate(7, id(task, 0.3, 2));
            assert_eq!(a, generate(7, id(task, 0.3, 2)));
            for other in [generate(8, id(task, 0.3, 2)), generate(7, id(task, 0.5, 2)), generate(7, id(task, 0.3, 3))] {
                assert_ne!(a.needles[0].text, other.needles[0].text, "{task}");
            }
        }
    }

    #[test]
    fn passkey_hides_one_number_and_asks_for_its_key() {
        let s = generate(1, id(Task::Passkey, 0.7, 0));
        assert_eq!(s.needles.len(), 1);
        assert_eq!(s.needles[0].depth, 0.7);
        let Answer::Number(value) = &s.answer else { panic!("{:?}", s.answer) };
        assert_eq!(value.len(), 7);
        let key = s.needles[0].text.strip_prefix("One of the special magic numbers for ").unwrap().split(' ').next().unwrap();
        assert!(s.needles[0].text.ends_with(&format!(" is: {value}.")));
        assert!(s.question.contains(key) && s.answer_prefix.contains(key) && !s.question.contains(value.as_str()));
    }

    #[test]
    fn multikey_adds_distractors_with_other_keys_and_values() {
        let s = generate(1, id(Task::Multikey, 0.1, 4));
        assert_eq!(s.needles.len(), MULTIKEY_NEEDLES);
        assert_eq!(s.needles[0].depth, 0.1);
        let Answer::Number(value) = &s.answer else { panic!() };
        let with_value = s.needles.iter().filter(|n| n.text.contains(value.as_str())).count();
        assert_eq!(with_value, 1, "only the asked needle holds the answer");
        let asked_key = s.needles[0].text.split(' ').nth(7).unwrap();
        assert!(s.question.contains(asked_key));
        for n in &s.needles[1..] {
            assert!(!n.text.contains(asked_key) && (0.0..1.0).contains(&n.depth), "{n:?}");
        }
    }

    #[test]
    fn vartrack_chains_five_names_forward_from_the_depth() {
        let s = generate(1, id(Task::Vartrack, 0.5, 0));
        let Answer::Variables(names) = &s.answer else { panic!() };
        assert_eq!(names.len(), VT_HOPS + 1);
        assert!(s.needles[0].text.starts_with(&format!("VAR {} = ", names[0])));
        let value = s.needles[0].text.trim_end_matches('.').rsplit(' ').next().unwrap();
        assert!(value.len() == 5 && value.parse::<u32>().is_ok());
        assert!(s.question.contains(value) && s.answer_prefix.contains(value));
        for hop in 1..names.len() {
            assert_eq!(s.needles[hop].text, format!("VAR {} = VAR {}.", names[hop], names[hop - 1]));
            assert!(s.needles[hop].depth >= s.needles[hop - 1].depth && s.needles[hop].depth <= 1.0);
        }
    }

    #[test]
    fn vartrack_opens_with_a_solved_example_of_another_chain() {
        let s = generate(2, id(Task::Vartrack, 0.3, 1));
        let (example, header) = s.header.rsplit_once('\n').unwrap();
        assert_eq!(header, VT_HEADER);
        assert!(example.starts_with(VT_HEADER) && example.contains("\nQuestion: Find all variables that are assigned the value "));
        let (_, answer) = example.rsplit_once(", they are: ").unwrap();
        let names: Vec<&str> = answer.split(' ').collect();
        assert_eq!(names.len(), VT_HOPS + 1);
        let Answer::Variables(real) = &s.answer else { panic!() };
        for (i, name) in names.iter().enumerate() {
            assert_eq!(name.len(), VARIABLE_NAME_LEN);
            assert!(!real.iter().any(|r| r == name), "the example gives away a real name");
            let assigned = if i == 0 { format!("VAR {name} = ") } else { format!("VAR {name} = VAR {}.", names[i - 1]) };
            assert_eq!(example.matches(&assigned).count(), 1, "{assigned}");
            if i > 0 {
                assert!(example.find(&assigned) > example.find(&format!("VAR {} = ", names[i - 1])), "the example's chain reads forward");
            }
        }
    }

    #[test]
    fn task_names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!("vartrack".parse::<Task>(), Ok(Task::Vartrack));
        assert_eq!("niah".parse::<Task>().unwrap_err(), "unknown task `niah` (expected passkey, multikey or vartrack)");
    }
}
