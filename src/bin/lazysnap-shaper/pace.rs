//! The pacing math of one direction of a shaped link: a token bucket in front of a
//! fixed propagation delay. Pure: every function takes the current time as an argument,
//! so tests drive it with made-up instants and never read a clock.
//!
//! Model: bytes that arrive at the link at `now` queue behind the bytes before them at
//! the bottleneck (`rate` bytes/s), may run up to `burst` bytes ahead of that pace, and
//! reach the far end `one_way` (= RTT/2) after they leave the bottleneck.

use std::time::{Duration, Instant};

/// Smallest burst: one read of a few TCP segments, so that tiny writes do not each wait
/// for a timer tick.
pub const MIN_BURST: u64 = 16 * 1024;
/// The burst as pacing time: the bucket holds what the link sends in this long.
pub const BURST_TIME: Duration = Duration::from_millis(2);
/// Largest piece the proxy reads and schedules at once on an unlimited link.
pub const MAX_PIECE: usize = 64 * 1024;

/// One direction of a link: rate limit, burst and one-way delay.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Bottleneck rate in bytes per second; `None` = unlimited.
    bytes_per_sec: Option<f64>,
    /// Bytes that may leave ahead of the pace (the bucket's depth).
    burst: u64,
    /// Propagation delay added after the bottleneck (RTT/2).
    one_way: Duration,
    /// When the bottleneck has sent everything scheduled so far (`None`: never used).
    free_at: Option<Instant>,
}

impl Pacer {
    /// A pacer for a link of `rate_mbit` megabits per second (10^6 bit/s; `0` =
    /// unlimited) and round-trip time `rtt`; the burst is [`burst_for`] the rate.
    pub fn new(rate_mbit: f64, rtt: Duration) -> Pacer {
        let bytes_per_sec = (rate_mbit > 0.0).then(|| rate_mbit * 1e6 / 8.0);
        Pacer {
            bytes_per_sec,
            burst: burst_for(bytes_per_sec),
            one_way: rtt / 2,
            free_at: None,
        }
    }

    /// The bucket depth in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The size of the pieces the proxy reads and schedules: at most the burst, so
    /// that a piece never waits for more than its own serialization time.
    pub fn piece_size(&self) -> usize {
        MAX_PIECE.min(self.burst as usize)
    }

    /// When `n` bytes that arrive at the link at `now` are delivered at the far end.
    /// Successive calls with non-decreasing `now` return non-decreasing instants (the
    /// link keeps the byte order).
    pub fn deliver_at(&mut self, now: Instant, n: u64) -> Instant {
        let Some(rate) = self.bytes_per_sec else {
            return now + self.one_way;
        };
        let start = match self.free_at {
            Some(f) if f > now => f,
            _ => now,
        };
        let finish = start + Duration::from_secs_f64(n as f64 / rate);
        self.free_at = Some(finish);
        let lead = Duration::from_secs_f64(self.burst as f64 / rate);
        let leave = finish.checked_sub(lead).map_or(now, |t| t.max(now));
        leave + self.one_way
    }
}

/// Bucket depth for a rate in bytes/s: what the link sends in [`BURST_TIME`], at least
/// [`MIN_BURST`]; [`MAX_PIECE`] when unlimited.
pub fn burst_for(bytes_per_sec: Option<f64>) -> u64 {
    match bytes_per_sec {
        None => MAX_PIECE as u64,
        Some(r) => ((r * BURST_TIME.as_secs_f64()) as u64).max(MIN_BURST),
    }
}

/// Bytes buffered in one direction before the proxy stops reading from the sender (so
/// that TCP pushes back): twice the bandwidth-delay product, at least 4 MiB.
pub fn queue_bytes(rate_mbit: f64, rtt: Duration) -> u64 {
    let bdp = if rate_mbit > 0.0 {
        (rate_mbit * 1e6 / 8.0 * rtt.as_secs_f64()) as u64
    } else {
        0
    };
    (2 * bdp).max(4 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_link_adds_only_half_the_rtt() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.0, ms(100));
        assert_eq!(p.deliver_at(t0, 1 << 30), t0 + ms(50));
        assert_eq!(p.deliver_at(t0 + ms(1), 1 << 30), t0 + ms(51));
        assert_eq!(p.burst(), 64 * 1024);
        assert_eq!(p.piece_size(), 64 * 1024);
    }

    #[test]
    fn burst_is_two_ms_of_the_rate_and_at_least_16k() {
        // 200 Mbit/s = 25e6 B/s: 2 ms = 50,000 B
        assert_eq!(burst_for(Some(25e6)), 50_000);
        // 20 Mbit/s = 2.5e6 B/s: 2 ms = 5,000 B < 16 KiB
        assert_eq!(burst_for(Some(2.5e6)), 16_384);
        assert_eq!(Pacer::new(20.0, ms(0)).piece_size(), 16_384);
        assert_eq!(Pacer::new(200.0, ms(0)).piece_size(), 50_000);
    }

    #[test]
    fn first_burst_leaves_at_once_then_the_rate_holds() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1e6 B/s, burst 16,384 B, no delay
        let mut p = Pacer::new(8.0, ms(0));
        assert_eq!(p.deliver_at(t0, 16_384), t0);
        // the second piece finishes at 32,768 µs and may lead by 16,384 µs
        assert_eq!(p.deliver_at(t0, 16_384), t0 + Duration::from_micros(16_384));
        assert_eq!(p.deliver_at(t0, 16_384), t0 + Duration::from_micros(32_768));
    }

    #[test]
    fn two_megabytes_at_20_mbit_take_eight_tenths_of_a_second() {
        let t0 = Instant::now();
        let mut p = Pacer::new(20.0, ms(0));
        let piece = p.piece_size() as u64;
        let total = 2_000_000u64;
        let mut last = t0;
        let mut sent = 0;
        while sent < total {
            let n = piece.min(total - sent);
            // a sender that writes everything at once: all pieces arrive at t0
            last = p.deliver_at(t0, n);
            sent += n;
        }
        // 2e6 B / 2.5e6 B/s = 0.8 s, less the 16,384 B burst lead (6.5536 ms)
        let expect = Duration::from_secs_f64(0.8 - 16_384.0 / 2.5e6);
        let got = last - t0;
        assert!(
            got.abs_diff(expect) < Duration::from_micros(2),
            "{got:?} vs {expect:?}"
        );
    }

    #[test]
    fn delay_follows_the_bottleneck_and_order_is_kept() {
        let t0 = Instant::now();
        // 8 Mbit/s, RTT 40 ms: one-way 20 ms
        let mut p = Pacer::new(8.0, ms(40));
        let a = p.deliver_at(t0, 16_384);
        let b = p.deliver_at(t0 + ms(1), 100);
        assert_eq!(a, t0 + ms(20));
        // b waits behind a: finishes at 16,484 µs, leads by 16,384 µs → leaves at 1 ms
        assert_eq!(b, t0 + ms(21));
        assert!(b >= a);
    }

    #[test]
    fn an_idle_link_refills_its_bucket() {
        let t0 = Instant::now();
        let mut p = Pacer::new(8.0, ms(0));
        for _ in 0..10 {
            p.deliver_at(t0, 16_384);
        }
        // 163,840 B at 1e6 B/s: busy until 163.84 ms; a second later it is idle again
        let later = t0 + ms(1200);
        assert_eq!(p.deliver_at(later, 16_384), later);
    }

    #[test]
    fn queue_holds_twice_the_bdp_and_at_least_4_mib() {
        assert_eq!(queue_bytes(0.0, ms(100)), 4 << 20);
        assert_eq!(queue_bytes(20.0, ms(100)), 4 << 20);
        // 1000 Mbit/s × 100 ms = 12.5 MB; twice = 25 MB
        assert_eq!(queue_bytes(1000.0, ms(100)), 25_000_000);
    }
}
