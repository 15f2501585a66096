//! A small flag parser: `--name value`, `--name=value`, `-X value`, short
//! flags bundled as curl and getopt take them (`-fsSL`, `-XPOST`, `-d@-`),
//! and durations such as `500ms`, `3s`, `1.5` (seconds) or `2m`.

use std::str::FromStr;
use std::time::Duration;

use crate::Failure;

/// Walks the arguments one flag at a time.
///
/// ```
/// # use rotary_examples::args::Args;
/// let mut a = Args::new(vec!["--conns=4".into(), "https://x/".into()]);
/// let mut conns = 1u32;
/// let mut url = None;
/// while let Some(arg) = a.next() {
///     match arg.as_str() {
///         "--conns" => conns = a.parse("--conns")?,
///         _ if !arg.starts_with('-') => url = Some(arg),
///         _ => return Err(a.unknown(&arg)),
///     }
/// }
/// assert_eq!((conns, url.as_deref()), (4, Some("https://x/")));
/// # Ok::<(), rotary_examples::Failure>(())
/// ```
#[derive(Debug)]
pub struct Args {
    items: std::vec::IntoIter<String>,
    attached: Option<Attached>,
}

/// What came with the flag [`Args::next`] returned, in the same argument.
#[derive(Debug)]
enum Attached {
    /// `--name=value`: the value.
    Value(String),
    /// `-abc` returned `-a`: `bc` is the value of `-a` if it takes one, and
    /// more flags (`-b`, `-c`) if it does not.
    Cluster(String),
}

impl Args {
    /// Arguments without the program name.
    pub fn new(args: Vec<String>) -> Args {
        Args {
            items: args.into_iter(),
            attached: None,
        }
    }

    /// The next flag or positional argument. `--name=value` yields `--name`
    /// and keeps `value` for [`Args::value`]. `-abc` yields `-a`; what
    /// follows the letter is `-a`'s value if [`Args::value`] asks for one,
    /// and otherwise the next flags, `-b` then `-c`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<String> {
        if let Some(Attached::Cluster(rest)) = self.attached.take() {
            return Some(self.short(&rest));
        }
        let arg = self.items.next()?;
        if arg.starts_with("--") {
            if let Some((name, value)) = arg.split_once('=') {
                self.attached = Some(Attached::Value(value.to_owned()));
                return Some(name.to_owned());
            }
        } else if let Some(letters) = arg.strip_prefix('-') {
            if letters.len() > 1 && letters.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Some(self.short(letters));
            }
        }
        Some(arg)
    }

    /// `-x` for the first letter of `letters`, keeping the rest attached.
    fn short(&mut self, letters: &str) -> String {
        let mut chars = letters.chars();
        let flag = chars.next().map_or_else(String::new, |c| format!("-{c}"));
        let rest = chars.as_str();
        if !rest.is_empty() {
            self.attached = Some(Attached::Cluster(rest.to_owned()));
        }
        flag
    }

    /// The value of flag `name`: the `=value` part or the next argument.
    ///
    /// # Errors
    /// A usage failure when there is none.
    pub fn value(&mut self, name: &str) -> Result<String, Failure> {
        if let Some(Attached::Value(v) | Attached::Cluster(v)) = self.attached.take() {
            return Ok(v);
        }
        self.items
            .next()
            .ok_or_else(|| Failure::usage(format!("{name} needs a value")))
    }

    /// The value of flag `name`, parsed.
    ///
    /// # Errors
    /// A usage failure naming the flag and the bad value.
    pub fn parse<T: FromStr>(&mut self, name: &str) -> Result<T, Failure>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.value(name)?;
        v.parse()
            .map_err(|e| Failure::usage(format!("{name}: bad value {v:?}: {e}")))
    }

    /// The value of flag `name` as a duration (see [`parse_duration`]).
    ///
    /// # Errors
    /// A usage failure naming the flag and the bad value.
    pub fn duration(&mut self, name: &str) -> Result<Duration, Failure> {
        let v = self.value(name)?;
        parse_duration(&v).map_err(|e| Failure::usage(format!("{name}: {e}")))
    }

    /// The failure for an unexpected argument.
    pub fn unknown(&self, arg: &str) -> Failure {
        if arg.starts_with('-') {
            Failure::usage(format!("unknown flag {arg}"))
        } else {
            Failure::usage(format!("unexpected argument {arg:?}"))
        }
    }

    /// True when a flag name asks for help.
    pub fn is_help(arg: &str) -> bool {
        matches!(arg, "-h" | "--help")
    }
}

/// Parse `500ms`, `3s`, `1.5` (seconds), `2m` or `1h` into a duration.
///
/// # Errors
/// A message for anything else (negative, not a number, unknown unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 500ms, 3s or 1.5)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}: must be zero or more"));
    }
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("bad duration {s:?}: too large"))
}

/// A duration as `1.23 s` or `450 ms`, for humans.
pub fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn flags_take_inline_or_next_values_and_report_missing_ones() {
        let mut a = Args::new(vec!["--a=1".into(), "--b".into(), "2".into(), "--c".into()]);
        assert_eq!(a.next().as_deref(), Some("--a"));
        assert_eq!(a.parse::<u32>("--a"), Ok(1));
        assert_eq!(a.next().as_deref(), Some("--b"));
        assert_eq!(a.value("--b").as_deref(), Ok("2"));
        assert_eq!(a.next().as_deref(), Some("--c"));
        assert_eq!(a.value("--c").unwrap_err().code, 2);
    }

    #[test]
    fn bundled_short_flags_split_and_the_rest_is_a_value_when_one_is_asked_for() {
        let mut a = Args::new(
            ["-fsSL", "-XPOST", "-d@-", "-H", "-x: y", "-", "-1"]
                .map(String::from)
                .to_vec(),
        );
        let mut seen = Vec::new();
        while let Some(arg) = a.next() {
            match arg.as_str() {
                "-X" | "-d" | "-H" => seen.push(format!("{arg}={}", a.value(&arg).expect("value"))),
                _ => seen.push(arg),
            }
        }
        assert_eq!(
            seen,
            ["-f", "-s", "-S", "-L", "-X=POST", "-d=@-", "-H=-x: y", "-", "-1"]
        );
    }
}
