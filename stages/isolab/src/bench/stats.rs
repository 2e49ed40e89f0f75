//! Medians, quartiles and ratios: how `isolab bench` turns a handful of runs into one honest
//! figure.
//!
//! A benchmark run on a shared machine wanders. The median of N runs ignores a stray slow
//! one; the interquartile range (the middle half of the runs) says how much the rest wander.
//! A ratio to the host is computed *per round* — the host and the container ran one after the
//! other, so both saw the same moment of the machine — and then summarised the same way.
//! When the ratios of the rounds spread wider than the ratio's distance from 1, the run cannot
//! tell the container from the host, and the report says so instead of printing a difference
//! that is only noise.

use serde::Serialize;

/// N samples, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The middle sample (the mean of the two middle ones for an even count).
    pub median: f64,
    /// The first quartile (25th percentile, linear interpolation between samples).
    pub q1: f64,
    /// The third quartile (75th percentile).
    pub q3: f64,
    /// How many samples.
    pub runs: usize,
    /// Every sample, in the order measured.
    pub samples: Vec<f64>,
}

impl Summary {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            runs: samples.len(),
            samples: samples.to_vec(),
        })
    }

    /// The interquartile range: how wide the middle half of the runs is.
    pub fn spread(&self) -> f64 {
        self.q3 - self.q1
    }
}

/// The `q` quantile of sorted samples, interpolating linearly between the two nearest ranks
/// (the "type 7" of Hyndman and Fan, numpy's and R's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    sorted[below] * (1.0 - weight) + sorted[above] * weight
}

/// Which way is better for a measured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    /// A throughput: more is better; the ratio is container / host.
    Higher,
    /// A duration: less is better; the ratio is host / container, so that a ratio below 1
    /// always means "slower than the host".
    Lower,
}

/// A sandbox's speed relative to the host's, round by round: `host` and `other` are paired
/// samples (the same round). `None` if a round lacks one of the two or a value is not positive.
pub fn ratios(host: &[f64], other: &[f64], better: Better) -> Option<Vec<f64>> {
    if host.len() != other.len() || host.is_empty() {
        return None;
    }
    host.iter()
        .zip(other)
        .map(|(&host, &other)| {
            if host <= 0.0 || other <= 0.0 {
                return None;
            }
            Some(match better {
                Better::Higher => other / host,
                Better::Lower => host / other,
            })
        })
        .collect()
}

/// Is a ratio's spread wider than the difference from 1 it shows? Then the runs cannot tell
/// the two apart: the difference may be noise.
pub fn within_noise(ratio: &Summary) -> bool {
    ratio.spread() > (ratio.median - 1.0).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles_interpolate() {
        let summary = Summary::of(&[4.0, 1.0, 3.0, 2.0, 5.0]).unwrap();
        assert_eq!((summary.median, summary.q1, summary.q3), (3.0, 2.0, 4.0));
        assert_eq!(summary.runs, 5);
        assert_eq!(summary.samples, [4.0, 1.0, 3.0, 2.0, 5.0], "kept in measured order");
        let even = Summary::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((even.median, even.q1, even.q3), (2.5, 1.75, 3.25));
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.median, one.spread()), (7.0, 0.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_are_per_round_and_higher_is_always_faster() {
        assert_eq!(ratios(&[100.0, 200.0], &[50.0, 200.0], Better::Higher), Some(vec![0.5, 1.0]));
        // Durations: twice as long is half the speed.
        assert_eq!(ratios(&[1.0, 2.0], &[2.0, 2.0], Better::Lower), Some(vec![0.5, 1.0]));
        assert_eq!(ratios(&[1.0], &[1.0, 2.0], Better::Higher), None, "unpaired rounds");
        assert_eq!(ratios(&[1.0], &[0.0], Better::Higher), None, "a zero is a failed run");
        assert_eq!(ratios(&[], &[], Better::Higher), None);
    }

    #[test]
    fn a_ratio_is_noise_when_its_spread_is_wider_than_its_difference() {
        // 0.98, but the rounds range over 0.95..1.01: cannot tell from the host.
        let noisy = Summary::of(&[0.95, 0.97, 0.98, 1.0, 1.01]).unwrap();
        assert!(within_noise(&noisy));
        // 0.80 with rounds within 0.79..0.81: a real difference.
        let clear = Summary::of(&[0.79, 0.80, 0.80, 0.81]).unwrap();
        assert!(!within_noise(&clear));
        // Exactly 1 with no spread at all is not flagged: nothing is claimed.
        assert!(!within_noise(&Summary::of(&[1.0, 1.0, 1.0]).unwrap()));
    }
}
