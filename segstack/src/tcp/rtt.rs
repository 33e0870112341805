//! Round-trip time estimation and the retransmission timeout (RFC 6298).

/// SRTT/RTTVAR estimator with exponential backoff.
///
/// The timeout is computed the way Linux does it, `SRTT + max(4 * RTTVAR,
/// rto_min)`, rather than RFC 6298's `max(SRTT + 4 * RTTVAR, rto_min)`: on a
/// LAN both give about `rto_min`, but Linux's form keeps a margin over the
/// smoothed RTT on long, steady paths, which avoids spurious timeouts.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<u64>,
    rttvar: u64,
    rto: u64,
    min: u64,
    max: u64,
    backoff: u32,
}

impl RttEstimator {
    /// A fresh estimator: RTO = `initial` until the first sample.
    pub(crate) fn new(initial: u64, min: u64, max: u64) -> RttEstimator {
        let max = max.max(1);
        let min = min.min(max);
        RttEstimator {
            srtt: None,
            rttvar: 0,
            rto: initial.clamp(min, max),
            min,
            max,
            backoff: 0,
        }
    }

    /// Feeds one RTT measurement `r` (ns).
    pub(crate) fn sample(&mut self, r: u64) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(r);
                self.rttvar = (3 * self.rttvar + err) / 4;
                self.srtt = Some((7 * srtt + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = srtt
            .saturating_add((4 * self.rttvar).max(self.min))
            .clamp(self.min, self.max);
    }

    /// The smoothed RTT, once measured.
    pub(crate) fn srtt(&self) -> Option<u64> {
        self.srtt
    }

    /// The current timeout, with backoff applied.
    pub(crate) fn rto(&self) -> u64 {
        let shifted = if self.backoff >= 32 {
            u64::MAX
        } else {
            self.rto.saturating_mul(1u64 << self.backoff)
        };
        shifted.min(self.max)
    }

    /// Doubles the timeout (a timer expired).
    pub(crate) fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(32);
    }

    /// Forgets the backoff (new data was acknowledged).
    pub(crate) fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn rfc6298_and_backoff() {
        let mut r = RttEstimator::new(1000 * MS, 200 * MS, 120_000 * MS);
        assert_eq!(r.rto(), 1000 * MS);
        r.sample(100 * MS);
        assert_eq!(r.srtt(), Some(100 * MS));
        // SRTT 100 + max(4 * 50, 200) = 300 ms
        assert_eq!(r.rto(), 300 * MS);
        r.sample(100 * MS);
        // RTTVAR = 3/4 * 50 = 37.5 -> 4x = 150 < 200
        assert_eq!(r.rto(), 300 * MS);
        r.back_off();
        assert_eq!(r.rto(), 600 * MS);
        for _ in 0..40 {
            r.back_off();
        }
        assert_eq!(r.rto(), 120_000 * MS);
        r.reset_backoff();
        assert_eq!(r.rto(), 300 * MS);
        let mut lan = RttEstimator::new(1000 * MS, 200 * MS, 120_000 * MS);
        lan.sample(50_000);
        assert!(lan.rto() >= 200 * MS && lan.rto() < 201 * MS);
    }
}
