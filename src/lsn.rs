//! PostgreSQL WAL positions (`pg_lsn`), as plain numbers that compare and subtract.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL position. PostgreSQL prints it as two hex halves, `16/B374D848`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL from `earlier` to `self` (0 when `earlier` is ahead).
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("not a WAL position: {s:?}"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("not a WAL position: {s:?}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("not a WAL position: {s:?}"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The timeline a WAL file name starts with (`000000020000000000000003` → 2).
pub fn timeline_of_walfile(name: &str) -> Option<u32> {
    name.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_halves() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
    }

    #[test]
    fn rejects_what_is_not_a_position() {
        for bad in ["", "16", "x/1", "1/", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn orders_and_subtracts() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.bytes_after(a), 1);
        assert_eq!(a.bytes_after(b), 0);
    }

    #[test]
    fn reads_the_timeline_of_a_wal_file_name() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000000A0000000000000003"), Some(10));
        assert_eq!(timeline_of_walfile("xyz"), None);
    }
}
