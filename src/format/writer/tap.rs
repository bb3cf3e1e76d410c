//! A reader that can record what passes through it: the
//! [`TarReader`](crate::format::tar_reader::TarReader) reads header blocks,
//! PAX and GNU long-name records and padding through it, and the writer
//! copies those bytes raw into the output.
//!
//! The reader reads exactly what it parses (512-byte blocks, payloads,
//! skips by reading) with no read-ahead, so the bytes recorded during a
//! `next_entry()` call are exactly the previous entry's unread data and
//! padding followed by the next entry's header blocks.

use std::cell::RefCell;
use std::io::{self, Read};

struct State<R> {
    inner: R,
    pos: u64,
    record: bool,
    buf: Vec<u8>,
}

/// `&Tap<R>` reads from `R`, counting bytes and recording them while on.
pub(super) struct Tap<R> {
    state: RefCell<State<R>>,
}

impl<R: Read> Tap<R> {
    /// A tap over `inner`, not recording.
    pub fn new(inner: R) -> Self {
        Tap {
            state: RefCell::new(State {
                inner,
                pos: 0,
                record: false,
                buf: Vec::new(),
            }),
        }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> u64 {
        self.state.borrow().pos
    }

    /// Starts recording (what was recorded before is kept until [`Tap::take`]).
    pub fn record(&self) {
        self.state.borrow_mut().record = true;
    }

    /// Stops recording and returns what was recorded.
    pub fn take(&self) -> Vec<u8> {
        let mut s = self.state.borrow_mut();
        s.record = false;
        std::mem::take(&mut s.buf)
    }
}

impl<R: Read> Read for &Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.borrow_mut();
        let n = s.inner.read(buf)?;
        s.pos += n as u64;
        if s.record {
            s.buf.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_on() {
        let tap = Tap::new(&b"0123456789"[..]);
        let mut r = &tap;
        let mut b = [0u8; 3];
        r.read_exact(&mut b).unwrap();
        tap.record();
        r.read_exact(&mut b).unwrap();
        assert_eq!(tap.take(), b"345");
        r.read_exact(&mut b).unwrap();
        assert_eq!(tap.take(), b"");
        assert_eq!(tap.pos(), 9);
    }
}
