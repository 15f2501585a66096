//! Bodies of any size that are never held in memory: a [`Pattern`] is a
//! seeded byte stream that can be read from any offset, so a test server
//! writes it as a reply ([`Pattern::fill`] is a [`Reply::generated`] fill),
//! an upload reads it from a [`PatternReader`] (in pieces of random sizes)
//! or a file ([`Pattern::write_file`]), and the receiving end checks it
//! as it arrives ([`PatternCheck`]) or by its SHA-256 ([`Pattern::sha256`]).
//!
//! The stream is made of 4 KiB blocks: each is a row of one shared table of
//! random bytes, chosen by the seed and the block's index, whose first
//! eight bytes are replaced by the block's index mixed with the seed. Any
//! byte lost, doubled or moved changes what follows it, and a whole block
//! out of place carries the wrong index. Making it costs a copy.
//!
//! [`Reply::generated`]: super::Reply::generated
//!
//! Owns nothing shared but the table, made once per process.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Bytes per block.
const BLOCK: u64 = 4096;
/// Rows of the shared table.
const ROWS: u64 = 64;

/// The table every pattern picks its blocks from: 256 KiB of fixed random bytes.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = fastrand::Rng::with_seed(0x7a61_e5ee_d0f0_0001);
        let mut t = vec![0u8; (BLOCK * ROWS) as usize];
        rng.fill(&mut t);
        t
    })
}

/// SplitMix64's finaliser: a well-mixed 64-bit function of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A seeded byte stream, the same from every offset for the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The seed.
    pub seed: u64,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed }
    }

    /// Writes the stream's bytes from `offset` into `buf`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let table = table();
        let mut at = offset;
        let mut out = &mut buf[..];
        while !out.is_empty() {
            let block = at / BLOCK;
            let within = at % BLOCK;
            let n = ((BLOCK - within) as usize).min(out.len());
            let row = (mix(self.seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % ROWS) * BLOCK;
            let tag = mix(block ^ self.seed.rotate_left(17)).to_le_bytes();
            let (dst, rest) = out.split_at_mut(n);
            let start = (row + within) as usize;
            dst.copy_from_slice(&table[start..start + n]);
            // The block's first eight bytes are its tag.
            for (i, d) in dst.iter_mut().enumerate() {
                let pos = within as usize + i;
                if pos >= tag.len() {
                    break;
                }
                *d = tag[pos];
            }
            out = rest;
            at += n as u64;
        }
    }

    /// A fill for [`Reply::generated`](super::Reply::generated).
    pub fn filler(&self) -> super::Fill {
        let p = *self;
        Arc::new(move |offset, buf| p.fill(offset, buf))
    }

    /// The first `len` bytes in memory (for small bodies).
    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(0, &mut v);
        v
    }

    /// SHA-256 of the first `len` bytes.
    pub fn sha256(&self, len: u64) -> [u8; 32] {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            self.fill(at, &mut buf[..n]);
            hash.update(&buf[..n]);
            at += n as u64;
        }
        let mut out = [0; 32];
        out.copy_from_slice(hash.finish().as_ref());
        out
    }

    /// Writes the first `len` bytes to a new file at `path`, 64 KiB at a time.
    pub fn write_file(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            self.fill(at, &mut buf[..n]);
            file.write_all(&buf[..n])?;
            at += n as u64;
        }
        file.flush()
    }

    /// The first `len` bytes as a reader that hands out pieces of the sizes
    /// `pieces` draws (each at least 1), as a pipe or a slow source would.
    pub fn reader(
        &self,
        len: u64,
        pieces: impl FnMut() -> usize + Send + 'static,
    ) -> PatternReader {
        PatternReader {
            pattern: *self,
            at: 0,
            len,
            pieces: Box::new(pieces),
        }
    }
}

/// A [`Pattern`]'s first bytes, read in pieces; see [`Pattern::reader`].
pub struct PatternReader {
    pattern: Pattern,
    at: u64,
    len: u64,
    pieces: Box<dyn FnMut() -> usize + Send>,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len - self.at;
        let n = ((self.pieces)().max(1) as u64)
            .min(left)
            .min(buf.len() as u64) as usize;
        self.pattern.fill(self.at, &mut buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

/// Checks bytes as they arrive against a [`Pattern`]'s first `len`: the
/// offset of the first difference, or of bytes past the end, is kept.
#[derive(Debug)]
pub struct PatternCheck {
    pattern: Pattern,
    len: u64,
    at: u64,
    wrong_at: Option<u64>,
    scratch: Vec<u8>,
}

impl PatternCheck {
    /// Expects the first `len` bytes of `pattern`.
    pub fn new(pattern: Pattern, len: u64) -> PatternCheck {
        PatternCheck {
            pattern,
            len,
            at: 0,
            wrong_at: None,
            scratch: Vec::new(),
        }
    }

    /// Takes the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        if self.wrong_at.is_none() {
            let fits = ((self.len - self.at.min(self.len)) as usize).min(data.len());
            self.scratch.resize(fits, 0);
            self.pattern.fill(self.at, &mut self.scratch);
            let same = self.scratch[..] == data[..fits];
            if !same {
                let off = self.scratch.iter().zip(data).position(|(a, b)| a != b);
                self.wrong_at = Some(self.at + off.unwrap_or(0) as u64);
            } else if fits < data.len() {
                self.wrong_at = Some(self.at + fits as u64);
            }
        }
        self.at += data.len() as u64;
    }

    /// Bytes taken so far.
    pub fn received(&self) -> u64 {
        self.at
    }

    /// Ok when every byte taken so far is the pattern's; else where not.
    pub fn prefix_ok(&self) -> Result<(), String> {
        match self.wrong_at {
            None => Ok(()),
            Some(at) if at >= self.len => Err(format!(
                "{} bytes where {} were expected",
                self.at, self.len
            )),
            Some(at) => Err(format!("byte {at} differs (of {} expected)", self.len)),
        }
    }

    /// Ok when exactly the pattern's `len` bytes were taken.
    pub fn complete(&self) -> Result<(), String> {
        self.prefix_ok()?;
        if self.at != self.len {
            return Err(format!("{} of {} bytes arrived", self.at, self.len));
        }
        Ok(())
    }
}
