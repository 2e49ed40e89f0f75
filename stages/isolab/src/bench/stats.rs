//! Medians, quartiles and ratios: how `isolab bench` turns a handful of runs into one honest
//! figure.
//!
//! A benchmark run on a shared machine wanders. The median of N runs ignores a stray slow
//! one; the interquartile range (the middle half of the runs) says how much the rest wander.
//! A ratio to the host is computed *per round* — the host and the container ran one after the
//! other, so both saw the same moment of the machine — and then summarised the same way.
//! When the middle half of the rounds' ratios reaches across 1 (some rounds faster, some
//! slower), or there are too few rounds to have a middle half, the run cannot tell the two
//! apart, and the report says so instead of printing a difference that is only noise.

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

/// Fewer rounds than this have no interquartile range worth the name: with two, the quartiles
/// are only the two samples pulled together.
pub const MIN_RUNS: usize = 3;

/// Why a ratio cannot be told from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Noise {
    /// The interquartile range of the rounds' ratios includes 1: some rounds went one way,
    /// some the other.
    SpreadIncludesOne,
    /// Fewer than [`MIN_RUNS`] rounds.
    TooFewRuns,
}

/// Is `ratio` (a summary of per-round ratios) within noise? `None` when its interquartile
/// range lies wholly on one side of 1: a real difference, however small.
pub fn noise(ratio: &Summary) -> Option<Noise> {
    if ratio.runs < MIN_RUNS {
        Some(Noise::TooFewRuns)
    } else if ratio.q1 <= 1.0 && 1.0 <= ratio.q3 {
        Some(Noise::SpreadIncludesOne)
    } else {
        None
    }
}

/// A ratio of two paired series, summarised, with its noise flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// The rounds' ratios.
    #[serde(flatten)]
    pub summary: Summary,
    /// Why it cannot be told from 1, if it cannot.
    pub noise: Option<Noise>,
}

impl Ratio {
    /// The round-by-round ratios of `other` to `base` (see [`ratios`]); `None` as there.
    pub fn of(base: &[f64], other: &[f64], better: Better) -> Option<Ratio> {
        let summary = Summary::of(&ratios(base, other, better)?)?;
        Some(Ratio { noise: noise(&summary), summary })
    }

    /// The median ratio.
    pub fn median(&self) -> f64 {
        self.summary.median
    }
}

/// What a ratio should reach.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// At least this (a speed against another's).
    AtLeast(f64),
    /// At most this (a duration against another's).
    AtMost(f64),
}

impl Goal {
    /// Does `median` reach it?
    pub fn met_by(self, median: f64) -> bool {
        match self {
            Goal::AtLeast(goal) => median >= goal,
            Goal::AtMost(goal) => median <= goal,
        }
    }

    /// `≥ 0.9`, `≤ 0.5`.
    pub fn label(self) -> String {
        match self {
            Goal::AtLeast(goal) => format!("≥ {goal}"),
            Goal::AtMost(goal) => format!("≤ {goal}"),
        }
    }
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
        assert_eq!((one.median, one.q1, one.q3), (7.0, 7.0, 7.0));
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
    fn a_ratio_is_noise_when_its_quartiles_include_one() {
        // 0.98, but the middle half of the rounds reaches 1.0: cannot tell from the host.
        let noisy = Summary::of(&[0.95, 0.97, 0.98, 1.0, 1.01]).unwrap();
        assert_eq!(noise(&noisy), Some(Noise::SpreadIncludesOne));
        // 0.80 with rounds within 0.79..0.81: a real difference.
        let clear = Summary::of(&[0.79, 0.80, 0.80, 0.81]).unwrap();
        assert_eq!(noise(&clear), None);
        // Wide, but wholly above 1: still a real difference (the old rule, spread against the
        // distance from 1, flagged this one).
        let wide = Summary::of(&[1.05, 1.10, 1.30, 1.50, 1.60]).unwrap();
        assert_eq!(noise(&wide), None);
        // Exactly 1 every round: nothing to tell apart.
        assert_eq!(noise(&Summary::of(&[1.0, 1.0, 1.0]).unwrap()), Some(Noise::SpreadIncludesOne));
        // A quartile exactly at 1 counts as including it.
        let edge = Summary::of(&[1.0, 1.0, 1.2, 1.3]).unwrap();
        assert_eq!(noise(&edge), Some(Noise::SpreadIncludesOne));
    }

    #[test]
    fn fewer_than_three_runs_are_too_few_whatever_they_show() {
        assert_eq!(noise(&Summary::of(&[0.5, 0.5]).unwrap()), Some(Noise::TooFewRuns));
        assert_eq!(noise(&Summary::of(&[2.0]).unwrap()), Some(Noise::TooFewRuns));
        assert_eq!(noise(&Summary::of(&[0.5, 0.5, 0.5]).unwrap()), None);
    }

    #[test]
    fn ratios_of_paired_series_carry_their_flag() {
        // Durations against crun's: this / crun, round by round.
        let ratio = Ratio::of(&[10.0, 10.0, 10.0], &[4.0, 5.0, 6.0], Better::Higher).unwrap();
        assert_eq!(ratio.median(), 0.5);
        assert_eq!(ratio.noise, None);
        let even = Ratio::of(&[10.0, 10.0, 10.0], &[9.0, 10.0, 11.0], Better::Higher).unwrap();
        assert_eq!(even.noise, Some(Noise::SpreadIncludesOne));
        assert!(Ratio::of(&[1.0], &[1.0, 2.0], Better::Higher).is_none());
    }

    #[test]
    fn goals_point_both_ways() {
        assert!(Goal::AtMost(0.5).met_by(0.5) && !Goal::AtMost(0.5).met_by(0.51));
        assert!(Goal::AtLeast(0.9).met_by(0.95) && !Goal::AtLeast(0.9).met_by(0.89));
        assert_eq!(
            (Goal::AtMost(0.75).label(), Goal::AtLeast(0.9).label()),
            ("≤ 0.75".to_string(), "≥ 0.9".to_string())
        );
    }
}
