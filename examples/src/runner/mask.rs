//! Masking of secrets in a job's output as it streams: every occurrence of
//! a masked variable's value (and of the job token) becomes `[MASKED]`,
//! also when the output arrives cut in the middle of one. Only a tail that
//! could still be the start of a secret is held back until more output (or
//! the end) shows whether it is one, so a job's last line goes out at once
//! unless it ends in such a prefix.

/// What replaces a secret.
pub(crate) const MASK: &[u8] = b"[MASKED]";

/// A streaming masker.
pub(crate) struct Masker {
    /// Longest first, so the longest secret at a position wins.
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Masker {
    /// A masker for `secrets`; empty ones are ignored (GitLab refuses to
    /// mask values shorter than 8 characters; this masks what it is given).
    pub(crate) fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker {
            secrets,
            held: Vec::new(),
        }
    }

    /// Take `data`; returns what can be written now, masked.
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(data);
        self.drain(false)
    }

    /// The end of the output: what was held back, masked.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, end: bool) -> Vec<u8> {
        let n = self.held.len();
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            // What follows may still turn out to be a (longer) secret:
            // wait for more output, unless there is none.
            if !end && self.may_start_at(i) {
                break;
            }
            match self.secret_at(i) {
                Some(len) => {
                    out.extend_from_slice(MASK);
                    i += len;
                }
                None => {
                    out.push(self.held[i]);
                    i += 1;
                }
            }
        }
        self.held.drain(..i);
        out
    }

    /// Some secret longer than what is held from `at` starts with it.
    fn may_start_at(&self, at: usize) -> bool {
        let rest = self.held.get(at..).unwrap_or_default();
        self.secrets
            .iter()
            .any(|s| s.len() > rest.len() && s.starts_with(rest))
    }

    /// The length of the (longest) secret starting at `at`.
    fn secret_at(&self, at: usize) -> Option<usize> {
        let rest = self.held.get(at..)?;
        self.secrets
            .iter()
            .find(|s| rest.starts_with(s))
            .map(Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_split(secrets: &[&str], input: &str, cuts: &[usize]) -> String {
        let mut m = Masker::new(secrets);
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([input.len()].iter()) {
            out.extend(m.push(&input.as_bytes()[from..to]));
            from = to;
        }
        out.extend(m.finish());
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn secrets_are_masked_however_the_output_is_cut() {
        let input = "token hunter22 and hunter2 and hunter22hunter22!";
        let want = "token [MASKED] and hunter2 and [MASKED][MASKED]!";
        for i in 0..=input.len() {
            for j in i..=input.len() {
                assert_eq!(
                    mask_split(&["hunter22"], input, &[i, j]),
                    want,
                    "cut at {i}, {j}"
                );
            }
        }
    }

    #[test]
    fn the_longest_secret_wins_and_nothing_is_held_without_secrets() {
        assert_eq!(
            mask_split(&["abc", "abcdef"], "xabcdefy", &[3]),
            "x[MASKED]y"
        );
        assert_eq!(
            mask_split(&["abc", "abcdef"], "xabcdy", &[2]),
            "x[MASKED]dy"
        );
        let mut m = Masker::new(Vec::<String>::new());
        assert_eq!(m.push(b"all of it"), b"all of it");
        assert!(m.finish().is_empty());
        // Only what could still be a secret waits.
        let mut m = Masker::new(["secret"]);
        assert_eq!(m.push(b"0123456789\n"), b"0123456789\n");
        assert_eq!(m.push(b"a sec"), b"a ");
        assert_eq!(m.push(b"ond"), b"second");
        assert_eq!(m.push(b" secre"), b" ");
        assert_eq!(m.finish(), b"secre");
    }
}
