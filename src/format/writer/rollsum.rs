//! zstd:chunked's content-defined chunk boundaries (FORMATS.md §2.1,
//! containers/storage `pkg/chunked/compressor`): the bup/librsync rolling
//! checksum over a 64-byte window with a char offset of 31; a chunk ends
//! after a byte when the low `RollsumBits = 16` bits of `s2` are all ones
//! (~64 KiB average). Runs of at least `holesThreshold = 1024` zero bytes are
//! not rolled byte by byte: they become their own `zeros` chunks.

/// `RollsumBits`.
pub(super) const SPLIT_BITS: u32 = 16;
/// `holesThreshold`: shortest zero run that becomes a `zeros` chunk.
pub(super) const HOLE_MIN: u64 = 1024;

const WINDOW: usize = 64;
const CHAR_OFFSET: u32 = 31;

/// The rolling checksum state of one file.
pub(super) struct RollSum {
    s1: u32,
    s2: u32,
    window: [u8; WINDOW],
    wofs: usize,
}

impl RollSum {
    /// The initial state (a window of zeros).
    pub fn new() -> Self {
        RollSum {
            s1: WINDOW as u32 * CHAR_OFFSET,
            s2: WINDOW as u32 * (WINDOW as u32 - 1) * CHAR_OFFSET,
            window: [0; WINDOW],
            wofs: 0,
        }
    }

    /// Rolls `ch` in (and the byte 64 back out).
    #[inline]
    pub fn roll(&mut self, ch: u8) {
        let drop = u32::from(self.window[self.wofs]);
        self.s1 = self.s1.wrapping_add(u32::from(ch)).wrapping_sub(drop);
        self.s2 = self
            .s2
            .wrapping_add(self.s1)
            .wrapping_sub(WINDOW as u32 * (drop + CHAR_OFFSET));
        self.window[self.wofs] = ch;
        self.wofs = (self.wofs + 1) & (WINDOW - 1);
    }

    /// Rolls `n` zero bytes in. Once the window holds only zeros a zero
    /// byte changes nothing, so at most 64 rolls are needed.
    pub fn roll_zeros(&mut self, n: u64) {
        for _ in 0..n.min(WINDOW as u64) {
            self.roll(0);
        }
    }

    /// Whether a chunk ends after the last byte rolled.
    #[inline]
    pub fn on_split(&self) -> bool {
        let mask = (1u32 << SPLIT_BITS) - 1;
        self.s2 & mask == mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rolls_saturate_after_one_window() {
        let mut a = RollSum::new();
        let mut b = RollSum::new();
        for x in b"some bytes first" {
            a.roll(*x);
            b.roll(*x);
        }
        a.roll_zeros(1_000_000);
        for _ in 0..1_000_000 {
            b.roll(0);
        }
        assert_eq!((a.s1, a.s2), (b.s1, b.s2));
    }

    #[test]
    fn splits_average_about_64k_on_noise() {
        // xorshift noise: deterministic, incompressible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut r = RollSum::new();
        let mut splits = 0;
        let n = 8 << 20;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            r.roll(x as u8);
            splits += u32::from(r.on_split());
        }
        // 8 MiB / 64 KiB = 128 expected.
        assert!((80..200).contains(&splits), "{splits}");
    }
}
