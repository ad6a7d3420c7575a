//! Gap arithmetic, pure: when a pause in a meter's summation stream is a
//! gap, and what a history answer leaves of it. No I/O; tested below.

/// Part of a meter's summation stream with no line: between two slots,
/// both exclusive, in unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gap {
    /// The last slot before the gap (a line exists there).
    pub start_ms: i64,
    /// The first slot after the gap (a line exists there).
    pub end_ms: i64,
}

/// The gap between the previous summation slot and this one, when it is
/// longer than `after_ms`.
pub fn detect(previous_ms: Option<i64>, slot_ms: i64, after_ms: i64) -> Option<Gap> {
    let start_ms = previous_ms?;
    (slot_ms - start_ms > after_ms).then_some(Gap {
        start_ms,
        end_ms: slot_ms,
    })
}

/// What one history answer does to a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// Entry times (unix ms) inside the gap, sorted, each once: the
    /// lines to write.
    pub fill: Vec<i64>,
    /// What is still to ask for: from the latest entry on, when another
    /// step still fits before the gap's end (a partial answer); `None`
    /// when the gap is filled.
    pub rest: Option<Gap>,
    /// The front of the gap the device no longer keeps (its first entry
    /// came later than one step after the start, or it had nothing): given
    /// up, never asked for again.
    pub lost: Option<Gap>,
}

/// Applies a history answer holding `entries` (unix ms, any order) to
/// `gap`, asked at `step_ms` spacing.
pub fn answer(gap: Gap, entries: &[i64], step_ms: i64) -> Answered {
    let mut fill: Vec<i64> = entries
        .iter()
        .copied()
        .filter(|&t| t > gap.start_ms && t < gap.end_ms)
        .collect();
    fill.sort_unstable();
    fill.dedup();
    // The device may answer coarser than asked: judge by its own spacing.
    let step_ms = fill
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .map_or(step_ms, |spacing| spacing.max(step_ms));
    let (Some(&first), Some(&last)) = (fill.first(), fill.last()) else {
        // Nothing inside the gap: the device keeps nothing from it.
        return Answered {
            fill,
            rest: None,
            lost: Some(gap),
        };
    };
    let lost = (first - gap.start_ms > step_ms + step_ms / 2).then_some(Gap {
        start_ms: gap.start_ms,
        end_ms: first,
    });
    // One more step still falls inside the gap: the device has more (a
    // device with nothing there answers nothing next time, and the rest
    // is given up then).
    let rest = (gap.end_ms - last > step_ms).then_some(Gap {
        start_ms: last,
        end_ms: gap.end_ms,
    });
    Answered { fill, rest, lost }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000;

    #[test]
    fn only_pauses_longer_than_the_threshold_are_gaps() {
        assert_eq!(detect(None, 10 * S, 3 * S), None);
        assert_eq!(detect(Some(8 * S), 10 * S, 3 * S), None);
        assert_eq!(
            detect(Some(2 * S), 10 * S, 3 * S),
            Some(Gap {
                start_ms: 2 * S,
                end_ms: 10 * S
            })
        );
    }

    #[test]
    fn a_full_answer_in_any_order_fills_the_gap() {
        let gap = Gap {
            start_ms: 0,
            end_ms: 5 * S,
        };
        let a = answer(gap, &[4 * S, 2 * S, 3 * S, S, 2 * S, 9 * S], S);
        assert_eq!(a.fill, vec![S, 2 * S, 3 * S, 4 * S]);
        assert_eq!((a.rest, a.lost), (None, None));
    }

    #[test]
    fn a_partial_answer_leaves_the_rest_open_from_its_latest_entry() {
        let gap = Gap {
            start_ms: 0,
            end_ms: 10 * S,
        };
        let a = answer(gap, &[2 * S, S], S);
        assert_eq!(a.fill, vec![S, 2 * S]);
        assert_eq!(
            a.rest,
            Some(Gap {
                start_ms: 2 * S,
                end_ms: 10 * S
            })
        );
        assert_eq!(a.lost, None);
        // Regression: one second left before an end 1.5 s away is asked for.
        let gap = Gap {
            start_ms: 300,
            end_ms: 3_800,
        };
        let a = answer(gap, &[2 * S, S], S);
        assert_eq!(
            a.rest,
            Some(Gap {
                start_ms: 2 * S,
                end_ms: 3_800
            })
        );
        assert_eq!(answer(a.rest.unwrap(), &[3 * S], S).rest, None);
    }

    #[test]
    fn what_the_device_no_longer_keeps_is_given_up() {
        let gap = Gap {
            start_ms: 0,
            end_ms: 10 * S,
        };
        let a = answer(gap, &[7 * S, 8 * S, 9 * S], S);
        assert_eq!(
            a.lost,
            Some(Gap {
                start_ms: 0,
                end_ms: 7 * S
            })
        );
        assert_eq!(a.rest, None);
        // Coarser than asked: no loss between its own entries.
        let a = answer(gap, &[2 * S, 5 * S, 8 * S], S);
        assert_eq!((a.lost, a.rest), (None, None));
        let a = answer(gap, &[], S);
        assert_eq!((a.fill.len(), a.rest, a.lost), (0, None, Some(gap)));
    }
}
