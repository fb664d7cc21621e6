//! Units and identifiers that cross module boundaries, each validated once
//! where it is built: bytes, 512-byte sectors, pool data blocks and 24-bit
//! thin device ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kernel's sector: every device-mapper table and status speaks in 512-byte units.
pub const SECTOR_SIZE: u64 = 512;

/// A byte count.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// A count of 512-byte sectors.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Sectors(pub u64);

impl Bytes {
    /// Whole sectors in this many bytes; `None` unless sector-aligned.
    pub fn to_sectors(self) -> Option<Sectors> {
        self.0
            .is_multiple_of(SECTOR_SIZE)
            .then_some(Sectors(self.0 / SECTOR_SIZE))
    }

    /// The whole sectors in this many bytes, a partial last one left out
    /// (a device's usable length).
    pub fn whole_sectors(self) -> Sectors {
        Sectors(self.0 / SECTOR_SIZE)
    }
}

impl Sectors {
    pub fn bytes(self) -> Bytes {
        Bytes(self.0 * SECTOR_SIZE)
    }
}

impl fmt::Display for Bytes {
    /// Human form with binary units, as `docker ps -s` prints sizes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

impl FromStr for Bytes {
    type Err = Error;

    /// Parses `4096`, `64k`, `64KiB`, `10G`, `1.5GiB`: powers of 1024, as
    /// Docker's `dm.basesize` and LVM sizes do. Exact: no floating point; a
    /// fraction must come out to whole bytes, and anything above 2^64 − 1
    /// is refused.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "size",
                s,
                "expected a number with an optional unit (K, M, G, T), e.g. 10G",
            )
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let shift: u32 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if int.is_empty()
            || frac.contains('.')
            || (num.contains('.') && frac.is_empty())
            || frac.len() > 18
        {
            return Err(bad());
        }
        let int: u128 = int.parse().map_err(|_| bad())?;
        let whole = int
            .checked_shl(shift)
            .filter(|v| *v >> shift == int)
            .ok_or_else(bad)?;
        let fraction = if frac.is_empty() {
            0
        } else {
            let digits: u128 = frac.parse().map_err(|_| bad())?;
            let scaled = digits << shift;
            let denom = 10u128.pow(frac.len() as u32);
            if !scaled.is_multiple_of(denom) {
                return Err(bad());
            }
            scaled / denom
        };
        let total = whole.checked_add(fraction).ok_or_else(bad)?;
        u64::try_from(total).map(Bytes).map_err(|_| bad())
    }
}

/// A thin device id inside a pool: the kernel keeps them in 24 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ThinId(u32);

impl ThinId {
    /// The largest id the kernel accepts (2^24 − 1).
    pub const MAX: u32 = (1 << 24) - 1;

    pub fn new(id: u32) -> Result<Self> {
        if id > Self::MAX {
            return Err(Error::invalid(
                "thin device id",
                &id.to_string(),
                "thin ids are 24-bit (0 to 16777215)",
            ));
        }
        Ok(ThinId(id))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for ThinId {
    type Error = Error;
    fn try_from(v: u32) -> Result<Self> {
        ThinId::new(v)
    }
}

impl From<ThinId> for u32 {
    fn from(v: ThinId) -> u32 {
        v.0
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The pool's data block size. The kernel takes 64 KiB to 1 GiB in multiples
/// of 64 KiB (128 sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct BlockSize(Sectors);

impl BlockSize {
    pub const MIN_SECTORS: u64 = 128;
    pub const MAX_SECTORS: u64 = 2_097_152;
    pub const DEFAULT: BlockSize = BlockSize(Sectors(128));

    pub fn from_bytes(b: Bytes) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "block size",
                &b.0.to_string(),
                "the pool's block size must be a multiple of 64 KiB between 64 KiB and 1 GiB",
            )
        };
        let s = b.to_sectors().ok_or_else(bad)?;
        if s.0 < Self::MIN_SECTORS || s.0 > Self::MAX_SECTORS || s.0 % Self::MIN_SECTORS != 0 {
            return Err(bad());
        }
        Ok(BlockSize(s))
    }

    pub fn sectors(self) -> Sectors {
        self.0
    }

    pub fn bytes(self) -> Bytes {
        self.0.bytes()
    }

    /// Bytes in `n` data blocks.
    pub fn blocks(self, n: u64) -> Bytes {
        Bytes(n * self.bytes().0)
    }

    /// `b` rounded up to whole blocks: the blocks that many bytes fill
    /// when written from a block boundary (at most `u64::MAX` rounded
    /// down to a block).
    pub fn round_up(self, b: Bytes) -> Bytes {
        let block = self.bytes().0;
        let n = b.0.div_ceil(block);
        Bytes(n.checked_mul(block).unwrap_or(u64::MAX / block * block))
    }
}

impl TryFrom<u64> for BlockSize {
    type Error = Error;
    /// From a sector count (as records store it), checked before any
    /// conversion to bytes, which could overflow.
    fn try_from(sectors: u64) -> Result<Self> {
        if !(Self::MIN_SECTORS..=Self::MAX_SECTORS).contains(&sectors)
            || !sectors.is_multiple_of(Self::MIN_SECTORS)
        {
            return Err(Error::invalid(
                "block size",
                &format!("{sectors} sectors"),
                "the pool's block size must be a multiple of 64 KiB between 64 KiB and 1 GiB",
            ));
        }
        Ok(BlockSize(Sectors(sectors)))
    }
}

impl From<BlockSize> for u64 {
    fn from(b: BlockSize) -> u64 {
        b.0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_units() {
        assert_eq!("4096".parse::<Bytes>().unwrap(), Bytes(4096));
        assert_eq!("64k".parse::<Bytes>().unwrap(), Bytes(65536));
        assert_eq!("64KiB".parse::<Bytes>().unwrap(), Bytes(65536));
        assert_eq!("10G".parse::<Bytes>().unwrap(), Bytes(10 << 30));
        assert_eq!("1.5GiB".parse::<Bytes>().unwrap(), Bytes(3 << 29));
        assert_eq!(
            "9007199254740993".parse::<Bytes>().unwrap(),
            Bytes(9_007_199_254_740_993)
        );
        assert_eq!(
            "18446744073709551615".parse::<Bytes>().unwrap(),
            Bytes(u64::MAX)
        );
        assert_eq!("0.5K".parse::<Bytes>().unwrap(), Bytes(512));
        for bad in [
            "",
            "G",
            "-1",
            "1.2.3",
            "10X",
            "0.3",
            "1.",
            ".5",
            "18446744073709551616",
            "16777216T",
        ] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn thin_ids_are_24_bit() {
        assert_eq!(ThinId::new(ThinId::MAX).unwrap().get(), 16_777_215);
        assert!(ThinId::new(ThinId::MAX + 1).is_err());
        assert!(serde_json::from_str::<ThinId>("16777216").is_err());
        assert_eq!(serde_json::from_str::<ThinId>("7").unwrap().get(), 7);
    }

    #[test]
    fn block_sizes_follow_the_kernel_rules() {
        assert_eq!(
            BlockSize::from_bytes(Bytes(65536)).unwrap().sectors(),
            Sectors(128)
        );
        assert_eq!(
            BlockSize::from_bytes(Bytes(1 << 30)).unwrap().sectors(),
            Sectors(2_097_152)
        );
        for bad in [0, 4096, 65536 + 512, 96 * 1024, 2 << 30] {
            assert!(
                BlockSize::from_bytes(Bytes(bad)).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn bytes_round_up_to_whole_blocks() {
        let b = BlockSize::DEFAULT;
        assert_eq!(b.round_up(Bytes(0)), Bytes(0));
        assert_eq!(b.round_up(Bytes(1)), Bytes(65536));
        assert_eq!(b.round_up(Bytes(65536)), Bytes(65536));
        assert_eq!(b.round_up(Bytes(8 << 20)), Bytes(8 << 20));
        assert_eq!(
            b.round_up(Bytes((8 << 20) + 4096)),
            Bytes((8 << 20) + 65536)
        );
        assert_eq!(b.round_up(Bytes(u64::MAX)), Bytes(u64::MAX - 65535));
    }

    #[test]
    fn displays_human_sizes() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(65536).to_string(), "64.0 KiB");
        assert_eq!(Bytes(10 << 30).to_string(), "10.0 GiB");
    }
}
