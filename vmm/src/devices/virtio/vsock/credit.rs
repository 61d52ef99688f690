//! Credit-based flow control for one connection (virtio 1.2, section 5.10.6.3). Each side
//! tells the other, in every header, how much buffer it has (`buf_alloc`) and how many bytes
//! it has consumed so far (`fwd_cnt`); a sender may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight. Counters are free-running
//! 32-bit values, so every difference is taken modulo 2^32.

use std::num::Wrapping;

use super::packet::Header;

/// The buffer we advertise per connection: guest bytes we hold for a host socket that is not
/// reading are never more than this.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send an unprompted OP_CREDIT_UPDATE once this many bytes were consumed since the guest
/// last heard our `fwd_cnt`.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;

#[derive(Debug, Default, Clone)]
pub struct Credit {
    /// Bytes we sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes we passed on to the host socket (our consumption).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as of the last header we sent.
    fwd_cnt_told: Wrapping<u32>,
    /// What the guest last told us.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Credit {
    /// Records the credit fields of a header from the guest.
    pub fn peer_update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes we may still send the guest. A `fwd_cnt` claiming more than we sent (a confused or
    /// hostile guest) reads as a huge in-flight count, hence no credit.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` payload bytes went to the guest.
    pub fn sent(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// `n` guest bytes went to the host socket.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt += Wrapping(n);
    }

    /// Fills a header's `buf_alloc` and `fwd_cnt`, remembering what the guest now knows.
    pub fn stamp(&mut self, header: Header) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        header.with_credit(BUF_ALLOC, self.fwd_cnt.0)
    }

    /// Whether the guest's view of our free space is stale enough to send a credit update.
    pub fn update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_told).0 >= CREDIT_UPDATE_THRESHOLD
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::OP_RW;

    #[test]
    fn free_space_shrinks_with_sends_and_grows_with_peer_consumption() {
        let mut c = Credit::default();
        assert_eq!(c.peer_free(), 0, "no credit before the guest says anything");
        c.peer_update(1000, 0);
        assert_eq!(c.peer_free(), 1000);
        c.sent(600);
        assert_eq!(c.peer_free(), 400);
        c.sent(400);
        assert_eq!(c.peer_free(), 0);
        c.peer_update(1000, 250);
        assert_eq!(c.peer_free(), 250);
        c.peer_update(2000, 1000);
        assert_eq!(c.peer_free(), 2000);
    }

    #[test]
    fn counters_wrap_around() {
        let mut c = Credit { rx_cnt: Wrapping(u32::MAX - 10), ..Credit::default() };
        c.peer_update(100, u32::MAX - 10);
        c.sent(50);
        assert_eq!(c.rx_cnt.0, 39);
        assert_eq!(c.peer_free(), 50);
        c.peer_update(100, 39);
        assert_eq!(c.peer_free(), 100);
    }

    #[test]
    fn lying_peer_gets_no_credit() {
        let mut c = Credit::default();
        c.sent(10);
        c.peer_update(1 << 20, 500);
        assert_eq!(c.peer_free(), 0, "peer claims it consumed more than we sent");
        c.peer_update(5, 0);
        assert_eq!(c.peer_free(), 0, "buffer shrank below what is in flight");
    }

    #[test]
    fn headers_carry_our_credit_and_updates_fall_due() {
        let mut c = Credit::default();
        c.forwarded(CREDIT_UPDATE_THRESHOLD - 1);
        assert!(!c.update_due());
        c.forwarded(1);
        assert!(c.update_due());
        let h = c.stamp(Header::to_guest(3, 1, 2, OP_RW));
        assert_eq!((h.buf_alloc(), h.fwd_cnt()), (BUF_ALLOC, CREDIT_UPDATE_THRESHOLD));
        assert!(!c.update_due(), "the guest was just told");
    }
}
