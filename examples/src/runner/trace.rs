//! A job's log: everything the job prints (and the runner's own lines),
//! masked, appended to `trace.log` in the job's directory, and sent from
//! there to the coordinator in `Content-Range` increments of at most
//! 1 MiB, as GitLab Runner sends them. Past the output limit the log says
//! so once and takes no more.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::mask::Masker;

/// Largest trace increment sent in one `PATCH` (GitLab Runner's limit).
pub(crate) const MAX_PATCH: u64 = 1024 * 1024;

/// The job's log on disk and how much of it the coordinator holds.
pub(crate) struct Trace {
    path: PathBuf,
    file: File,
    masker: Masker,
    /// Bytes written to the file.
    pub(crate) len: u64,
    /// Bytes the coordinator holds.
    pub(crate) sent: u64,
    /// How often increments go (the coordinator's
    /// `X-GitLab-Trace-Update-Interval`).
    pub(crate) interval: Duration,
    /// The last time the coordinator heard about the job.
    pub(crate) last_contact: Option<Instant>,
    /// Increments accepted.
    pub(crate) patches: u32,
    limit: u64,
    truncated: bool,
    /// A write to the file failed (the job fails with it).
    pub(crate) broken: Option<String>,
}

impl Trace {
    /// `trace.log` in `dir`, masking `masker`'s secrets, taking at most
    /// `limit` bytes of output.
    pub(crate) fn new(dir: &Path, masker: Masker, limit: u64) -> Result<Trace, String> {
        let path = dir.join("trace.log");
        let file = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Trace {
            path,
            file,
            masker,
            len: 0,
            sent: 0,
            interval: Duration::from_secs(3),
            last_contact: None,
            patches: 0,
            limit,
            truncated: false,
            broken: None,
        })
    }

    /// Output of the job, masked.
    pub(crate) fn write(&mut self, data: &[u8]) {
        let masked = self.masker.push(data);
        self.append(&masked);
    }

    /// A line of the runner's own, masked like the rest.
    pub(crate) fn line(&mut self, s: impl AsRef<str>) {
        let mut line = s.as_ref().as_bytes().to_vec();
        line.push(b'\n');
        self.write(&line);
    }

    /// What the masker held back, now that this output has ended.
    pub(crate) fn settle(&mut self) {
        let rest = self.masker.finish();
        self.append(&rest);
    }

    fn append(&mut self, data: &[u8]) {
        if data.is_empty() || self.truncated {
            return;
        }
        let room = usize::try_from(self.limit.saturating_sub(self.len)).unwrap_or(usize::MAX);
        let (take, over) = if data.len() > room {
            (&data[..room], true)
        } else {
            (data, false)
        };
        let mut out = take.to_vec();
        if over {
            self.truncated = true;
            out.extend_from_slice(
                format!(
                    "\nJob's log exceeded limit of {} bytes.\n\
                     Job execution will continue but no more output will be collected.\n",
                    self.limit
                )
                .as_bytes(),
            );
        }
        match self.file.write_all(&out) {
            Ok(()) => self.len += out.len() as u64,
            Err(e) => {
                self.broken
                    .get_or_insert_with(|| format!("writing {}: {e}", self.path.display()));
            }
        }
    }

    /// The next increment: bytes `sent..` (at most [`MAX_PATCH`]) and the
    /// end offset (exclusive); `None` when the coordinator has it all.
    pub(crate) fn increment(&self) -> Result<Option<(Bytes, u64)>, String> {
        if self.sent >= self.len {
            return Ok(None);
        }
        let end = self.len.min(self.sent + MAX_PATCH);
        let read = |e: std::io::Error| format!("reading {}: {e}", self.path.display());
        let mut f = File::open(&self.path).map_err(read)?;
        f.seek(SeekFrom::Start(self.sent)).map_err(read)?;
        let n = usize::try_from(end - self.sent).unwrap_or(0);
        let mut buf = vec![0; n];
        f.read_exact(&mut buf).map_err(read)?;
        Ok(Some((Bytes::from(buf), end)))
    }

    /// Time for an increment (or, with nothing new, a keep-alive)?
    pub(crate) fn due(&self) -> bool {
        self.last_contact
            .is_none_or(|t| t.elapsed() >= self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_masked_capped_and_sent_in_increments_of_at_most_a_mib() {
        let dir = crate::TempDir::new("trace-test").expect("temp dir");
        let mut t =
            Trace::new(dir.path(), Masker::new(["s3cret-value"]), 3 * MAX_PATCH).expect("trace");
        t.write(b"token: s3cret-");
        t.write(b"value\n");
        t.settle();
        let (first, end) = t.increment().expect("read").expect("something to send");
        assert_eq!(&first[..], b"token: [MASKED]\n");
        assert_eq!(end, t.len);
        t.sent = end;
        assert!(t.increment().expect("read").is_none());
        // 4 MiB of output: capped at the limit, with one notice.
        for _ in 0..64 {
            t.write(&[b'x'; 64 * 1024]);
        }
        t.settle();
        let text = std::fs::read_to_string(dir.path().join("trace.log")).expect("log");
        assert_eq!(text.matches("exceeded limit").count(), 1);
        assert!(t.len <= 3 * MAX_PATCH + 200, "{}", t.len);
        let mut sizes = Vec::new();
        while let Some((chunk, end)) = t.increment().expect("read") {
            sizes.push(chunk.len() as u64);
            t.sent = end;
        }
        assert!(sizes.iter().all(|s| *s <= MAX_PATCH), "{sizes:?}");
        assert_eq!(sizes.len(), 4, "{sizes:?}");
    }
}
