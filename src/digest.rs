//! Content digests (`sha256:<hex>`) and the hashing helpers that compute them:
//! the records hash their journal with them, and images name their content.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

const PREFIX: &str = "sha256:";

/// A validated content digest: `sha256:` followed by 64 lower-case hex digits.
///
/// Other algorithms (`sha512:` and so on) are refused: every digest in the
/// archives we read and write is a sha256.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates `sha256:<64 lower-hex>`.
    pub fn parse(s: &str) -> Result<Digest> {
        let why = if let Some(hex) = s.strip_prefix(PREFIX) {
            if hex.len() != 64 {
                format!("expected 64 hex digits after sha256:, found {}", hex.len())
            } else if !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                "the hex part must be lower-case hex digits".to_string()
            } else {
                return Ok(Digest(s.to_string()));
            }
        } else if let Some((alg, _)) = s.split_once(':') {
            format!("unsupported algorithm {alg:?}: only sha256 digests are accepted")
        } else {
            "expected sha256:<64 lower-case hex digits>".to_string()
        };
        Err(Error::invalid("digest", s, &why))
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The digest from a raw 32-byte sha256 value.
    pub fn from_sha256(raw: &[u8; 32]) -> Digest {
        let mut s = String::with_capacity(PREFIX.len() + 64);
        s.push_str(PREFIX);
        for b in raw {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Digest(s)
    }

    /// The digest from its 64 hex digits (without the `sha256:` prefix).
    pub fn from_hex(hex: &str) -> Result<Digest> {
        Digest::parse(&format!("{PREFIX}{hex}"))
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256 that yields a [`Digest`] and counts the bytes it saw.
/// Also an `io::Write` sink, so `io::copy(&mut reader, &mut hasher)` works.
#[derive(Clone, Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest::from_sha256(&self.sha.finalize().into())
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that passes everything to `inner` and hashes what was written.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> DigestWriter<W> {
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner writer, the digest of everything written and its length.
    pub fn finish(self) -> (W, Digest, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The digest of everything read so far.
    pub fn digest(&self) -> Digest {
        self.hasher.clone().finish()
    }

    /// The inner reader, the digest of everything read and its length.
    pub fn finish(self) -> (R, Digest, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_and_parse() {
        assert_eq!(Digest::of_bytes(b"").as_str(), EMPTY);
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.short(), "e3b0c44298fc");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::from_hex(d.hex()).unwrap(), d);
    }

    #[test]
    fn digest_rejects_bad_forms() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256", "sha512"),
            &EMPTY["sha256:".len()..],
            &format!("{EMPTY}0"),
            &EMPTY.replace('e', "g"),
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert!(
                matches!(err, Error::Invalid { what: "digest", .. }),
                "{bad}"
            );
            assert!(err.to_string().starts_with("invalid digest"), "{err}");
        }
    }

    #[test]
    fn digest_serde_as_string() {
        let d = Digest::of_bytes(b"x");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&j).unwrap();
        assert_eq!(back, d);
        let err = serde_json::from_str::<Digest>("\"sha256:nope\"").unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
    }

    #[test]
    fn hashing_helpers_agree() {
        let data = b"hello world, hashed three ways";
        let mut h = Hasher::new();
        h.update(&data[..5]);
        h.update(&data[5..]);
        assert_eq!(h.len(), data.len() as u64);
        let a = h.finish();
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(data).unwrap();
        let (out, b, n) = w.finish();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        let mut r = DigestReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (_, c, _) = r.finish();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, Digest::of_bytes(data));
    }
}
