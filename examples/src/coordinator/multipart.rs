//! A streaming `multipart/form-data` reader (RFC 7578) for artifact
//! uploads: it never holds a part in memory, only a delimiter's worth of
//! look-behind and one part's headers (capped), and reports the size and
//! SHA-256 of the part named `file`, as GitLab's artifacts endpoint reads it.

use std::io::Write;

use ring::digest::{Context, SHA256};

/// Most bytes of one part's header block.
const MAX_PART_HEAD: usize = 8 * 1024;
/// Most parts in one body.
const MAX_PARTS: usize = 16;

/// What the body's `file` part held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The `filename` parameter of its `Content-Disposition`.
    pub filename: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter (a preamble is allowed and ignored).
    Preamble,
    /// Right after a delimiter: `\r\n` (a part follows) or `--` (the end).
    AfterDelimiter,
    /// Reading a part's header block.
    PartHead,
    /// Inside a part's content.
    Data,
    /// After the close delimiter: the epilogue, ignored.
    End,
}

/// Feed the body in pieces with [`Multipart::feed`], then call
/// [`Multipart::finish`].
pub(super) struct Multipart {
    /// `\r\n--boundary`; the first delimiter may lack the CRLF.
    delimiter: Vec<u8>,
    state: State,
    pending: Vec<u8>,
    parts: usize,
    /// The current part is `name="file"`.
    in_file: bool,
    hash: Option<Context>,
    file: Option<FilePart>,
    size: u64,
    filename: String,
    /// Where the `file` part's bytes are copied as they stream in.
    sink: Option<Box<dyn Write + Send>>,
    sink_error: Option<String>,
}

impl Multipart {
    /// A reader for a body whose `Content-Type` is `content_type`.
    ///
    /// # Errors
    /// Not `multipart/form-data`, or no usable `boundary` parameter.
    pub(super) fn new(content_type: &str) -> Result<Multipart, String> {
        let mut params = content_type.split(';');
        let kind = params.next().unwrap_or_default().trim();
        if !kind.eq_ignore_ascii_case("multipart/form-data") {
            return Err(format!("content type {kind:?}, not multipart/form-data"));
        }
        let boundary = params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .ok_or("multipart/form-data without a boundary")?;
        // RFC 2046 §5.1.1: 1 to 70 characters.
        if boundary.is_empty()
            || boundary.len() > 70
            || boundary.bytes().any(|b| b.is_ascii_control())
        {
            return Err(format!("bad multipart boundary {boundary:?}"));
        }
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Ok(Multipart {
            delimiter,
            state: State::Preamble,
            // The first delimiter may start the body: pretend a CRLF came first.
            pending: b"\r\n".to_vec(),
            parts: 0,
            in_file: false,
            hash: None,
            file: None,
            size: 0,
            filename: String::new(),
            sink: None,
            sink_error: None,
        })
    }

    /// Also copy the `file` part's bytes to `sink` as they arrive.
    pub(super) fn with_sink(mut self, sink: Box<dyn Write + Send>) -> Multipart {
        self.sink = Some(sink);
        self
    }

    /// Take the next piece of the body.
    ///
    /// # Errors
    /// A malformed body (a part's headers too large, too many parts, two
    /// `file` parts, bytes where a delimiter must end).
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.pending.extend_from_slice(data);
        while self.step()? {}
        Ok(())
    }

    /// One step over `pending`; false when it needs more bytes.
    fn step(&mut self) -> Result<bool, String> {
        let d = self.delimiter.len();
        match self.state {
            State::Preamble | State::Data => {
                let found = find(&self.pending, &self.delimiter);
                let upto = match found {
                    Some(i) => i,
                    // Keep what could be the start of a delimiter.
                    None => self.pending.len().saturating_sub(d - 1),
                };
                if self.state == State::Data {
                    self.content(upto);
                }
                match found {
                    Some(i) => {
                        self.pending.drain(..i + d);
                        if self.state == State::Data {
                            self.end_part();
                        }
                        self.state = State::AfterDelimiter;
                        Ok(true)
                    }
                    None => {
                        self.pending.drain(..upto);
                        Ok(false)
                    }
                }
            }
            State::AfterDelimiter => {
                // Transport padding (spaces, tabs) may follow a delimiter.
                let pad = self
                    .pending
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                let rest = &self.pending[pad..];
                if rest.len() < 2 {
                    if pad > 64 {
                        return Err("padding after a multipart delimiter".into());
                    }
                    return Ok(false);
                }
                if rest.starts_with(b"--") {
                    self.state = State::End;
                    self.pending.clear();
                    return Ok(false);
                }
                if !rest.starts_with(b"\r\n") {
                    return Err("bytes after a multipart delimiter".into());
                }
                self.pending.drain(..pad + 2);
                self.parts += 1;
                if self.parts > MAX_PARTS {
                    return Err(format!("more than {MAX_PARTS} multipart parts"));
                }
                self.state = State::PartHead;
                Ok(true)
            }
            State::PartHead => {
                // A part with no headers starts with the blank line.
                let end = if self.pending.starts_with(b"\r\n") {
                    Some(0)
                } else {
                    find(&self.pending, b"\r\n\r\n")
                };
                let Some(end) = end else {
                    if self.pending.len() > MAX_PART_HEAD {
                        return Err("multipart part headers too large".into());
                    }
                    return Ok(false);
                };
                if end > MAX_PART_HEAD {
                    return Err("multipart part headers too large".into());
                }
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let skip = if end == 0 { 2 } else { end + 4 };
                self.pending.drain(..skip);
                self.start_part(&head)?;
                // The content starts after the blank line; an empty part's
                // delimiter follows at once, with its own CRLF.
                self.state = State::Data;
                Ok(true)
            }
            State::End => {
                self.pending.clear();
                Ok(false)
            }
        }
    }

    /// Content bytes `pending[..upto]` of the current part.
    fn content(&mut self, upto: usize) {
        let bytes = &self.pending[..upto];
        if self.in_file {
            self.size += bytes.len() as u64;
            if let Some(h) = &mut self.hash {
                h.update(bytes);
            }
            if let (Some(sink), None) = (&mut self.sink, &self.sink_error) {
                if let Err(e) = sink.write_all(bytes) {
                    self.sink_error = Some(format!("storing the file part: {e}"));
                }
            }
        }
    }

    fn start_part(&mut self, head: &str) -> Result<(), String> {
        let disposition = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        let param = |key: &str| {
            disposition
                .split(';')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        };
        self.in_file = param("name").as_deref() == Some("file");
        if self.in_file {
            if self.file.is_some() {
                return Err("two multipart parts named \"file\"".into());
            }
            self.filename = param("filename").unwrap_or_default();
            self.size = 0;
            self.hash = Some(Context::new(&SHA256));
        }
        Ok(())
    }

    fn end_part(&mut self) {
        if self.in_file {
            let sha = self.hash.take().map(|h| hex(h.finish().as_ref()));
            self.file = Some(FilePart {
                filename: std::mem::take(&mut self.filename),
                size: self.size,
                sha256: sha.unwrap_or_default(),
            });
            self.in_file = false;
        }
    }

    /// The `file` part, once the body ended.
    ///
    /// # Errors
    /// The body ended before its close delimiter, or had no `file` part.
    pub(super) fn finish(mut self) -> Result<FilePart, String> {
        if let Some(why) = self.sink_error.take() {
            return Err(why);
        }
        if let Some(mut sink) = self.sink.take() {
            sink.flush()
                .map_err(|e| format!("storing the file part: {e}"))?;
        }
        if self.state != State::End {
            return Err("multipart body ended before its close delimiter".into());
        }
        self.file
            .ok_or_else(|| "no multipart part named \"file\"".into())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex(ring::digest::digest(&SHA256, b).as_ref())
    }

    fn body(file: &[u8]) -> Vec<u8> {
        let mut b = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"artifact_format\"\r\n\r\nzip\r\n\
                      --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"artifacts.zip\"\r\n\
                      Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n--XyZ--\r\nepilogue");
        b
    }

    fn read(body: &[u8], cuts: &[usize]) -> Result<FilePart, String> {
        let mut m = Multipart::new("multipart/form-data; boundary=\"XyZ\"")?;
        let mut from = 0;
        for &to in cuts.iter().chain([body.len()].iter()) {
            m.feed(&body[from..to])?;
            from = to;
        }
        m.finish()
    }

    #[test]
    fn the_file_part_is_measured_the_same_split_at_every_byte() {
        // Content that looks like the start of a delimiter, and CRLFs.
        let file = b"\r\n--XyQ\r\n-\r\n--Xy data \r\n\r\n".to_vec();
        let b = body(&file);
        let want = FilePart {
            filename: "artifacts.zip".into(),
            size: file.len() as u64,
            sha256: sha(&file),
        };
        for i in 0..b.len() {
            for j in (i..b.len()).step_by(3) {
                assert_eq!(read(&b, &[i, j]), Ok(want.clone()), "cut at {i}, {j}");
            }
        }
    }

    #[test]
    fn empty_and_large_files_and_a_body_starting_with_its_delimiter() {
        let empty = read(&body(b""), &[]).expect("empty file part");
        assert_eq!((empty.size, empty.sha256), (0, sha(b"")));
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = body(&big);
        let cuts: Vec<usize> = (1..b.len()).step_by(16 * 1024).collect();
        assert_eq!(read(&b, &cuts).map(|f| f.sha256), Ok(sha(&big)));
        let direct = b"--XyZ\r\nContent-Disposition: form-data; name=file\r\n\r\nabc\r\n--XyZ--";
        assert_eq!(read(direct, &[]).map(|f| f.size), Ok(3));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(Multipart::new("application/json").is_err());
        assert!(Multipart::new("multipart/form-data").is_err());
        // No close delimiter.
        let mut b = body(b"abc");
        b.truncate(b.len() - "--\r\nepilogue".len() - 2);
        assert!(read(&b, &[]).is_err());
        // No file part.
        let none = b"--XyZ\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--XyZ--";
        assert!(read(none, &[]).is_err());
        // Garbage after a delimiter.
        assert!(read(b"--XyZ!!\r\n", &[]).is_err());
        // Part headers that never end stay capped.
        let mut endless = b"--XyZ\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'h', MAX_PART_HEAD + 10));
        assert!(read(&endless, &[]).is_err());
    }
}
