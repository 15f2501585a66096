//! Masking of secrets in a job's output as it streams: every occurrence of
//! a masked variable's value (and of the job token) becomes `[MASKED]`,
//! also when the output arrives cut in the middle of one. Only the last
//! `longest secret - 1` bytes are held back until more output (or the end)
//! shows whether they start a secret.

/// What replaces a secret.
pub(crate) const MASK: &[u8] = b"[MASKED]";

/// A streaming masker.
pub(crate) struct Masker {
    /// Longest first, so the longest secret at a position wins.
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
    keep: usize,
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
        let keep = secrets.first().map_or(0, |s| s.len() - 1);
        Masker {
            secrets,
            held: Vec::new(),
            keep,
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
        // A secret starting before `safe` lies wholly inside `held`, so
        // whether it is one is known now.
        let safe = if end {
            self.held.len()
        } else {
            self.held.len().saturating_sub(self.keep)
        };
        let mut out = Vec::with_capacity(safe);
        let mut i = 0;
        while i < safe {
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
        // A secret may have run past `safe`: what it covered is gone too.
        self.held.drain(..i.min(self.held.len()));
        out
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
        assert_eq!(m.push(b"0123456789"), b"01234");
        assert_eq!(m.finish(), b"56789");
    }
}
