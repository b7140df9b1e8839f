//! `SpikeEvents`: a batch of spike rasters (B x T x units) held as per-(sample, step) event lists.
//!
//! Invariants: `offsets.len() == batch * steps + 1`, offsets are non-decreasing, start at 0 and end at
//! `unit_ids.len()`; every unit id is `< units`. A unit listed k times in one (sample, step) carries a
//! spike count of k (N-MNIST and SHD inputs are counts). This is the host format every backend uploads
//! from, and the compact form the engine keeps for backward (4 bytes per event plus the offsets).

use crate::error::{CoreError, Result};

/// Spike counts of a batch, `batch x steps x units`, stored as event lists per (sample, step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpikeEvents {
    batch: usize,
    steps: usize,
    units: usize,
    offsets: Vec<u32>,
    unit_ids: Vec<u32>,
}

impl SpikeEvents {
    /// Builds from raw parts, checking every invariant.
    pub fn from_parts(
        batch: usize,
        steps: usize,
        units: usize,
        offsets: Vec<u32>,
        unit_ids: Vec<u32>,
    ) -> Result<Self> {
        if offsets.len() != batch * steps + 1 {
            return Err(CoreError::Spikes(format!(
                "{} offsets for {batch} samples x {steps} steps (need {})",
                offsets.len(),
                batch * steps + 1
            )));
        }
        if offsets[0] != 0 || *offsets.last().unwrap_or(&0) as usize != unit_ids.len() {
            return Err(CoreError::Spikes(format!(
                "offsets must run from 0 to the event count {}",
                unit_ids.len()
            )));
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(CoreError::Spikes("offsets decrease".into()));
        }
        if let Some(bad) = unit_ids.iter().find(|&&u| u as usize >= units) {
            return Err(CoreError::Spikes(format!(
                "unit id {bad} out of range for {units} units"
            )));
        }
        Ok(Self {
            batch,
            steps,
            units,
            offsets,
            unit_ids,
        })
    }

    /// Builds from dense counts laid out `[sample][step][unit]`.
    pub fn from_dense_counts<C: Copy + Into<u32>>(
        batch: usize,
        steps: usize,
        units: usize,
        counts: &[C],
    ) -> Result<Self> {
        if counts.len() != batch * steps * units {
            return Err(CoreError::Spikes(format!(
                "{} dense counts for a {batch} x {steps} x {units} raster",
                counts.len()
            )));
        }
        let mut offsets = Vec::with_capacity(batch * steps + 1);
        let mut unit_ids = Vec::new();
        offsets.push(0);
        for row in counts.chunks_exact(units.max(1)).take(batch * steps) {
            for (unit, &count) in row.iter().enumerate() {
                for _ in 0..count.into() {
                    unit_ids.push(unit as u32);
                }
            }
            offsets.push(unit_ids.len() as u32);
        }
        if units == 0 {
            offsets.resize(batch * steps + 1, 0);
        }
        Ok(Self {
            batch,
            steps,
            units,
            offsets,
            unit_ids,
        })
    }

    /// Dense counts laid out `[sample][step][unit]`.
    pub fn to_dense_counts(&self) -> Vec<u16> {
        let mut dense = vec![0u16; self.batch * self.steps * self.units];
        for row in 0..self.batch * self.steps {
            for &u in self.row(row) {
                let cell = &mut dense[row * self.units + u as usize];
                *cell = cell.saturating_add(1);
            }
        }
        dense
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn steps(&self) -> usize {
        self.steps
    }
    pub fn units(&self) -> usize {
        self.units
    }
    /// Offsets into `unit_ids`, one per (sample, step) row plus the end.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }
    /// Unit id of every event, grouped by (sample, step) row.
    pub fn unit_ids(&self) -> &[u32] {
        &self.unit_ids
    }
    /// Total spike count of the batch.
    pub fn total_events(&self) -> usize {
        self.unit_ids.len()
    }
    /// Events of row `sample * steps + step`.
    pub fn row(&self, row: usize) -> &[u32] {
        &self.unit_ids[self.offsets[row] as usize..self.offsets[row + 1] as usize]
    }
    /// Events of one (sample, step).
    pub fn events(&self, sample: usize, step: usize) -> &[u32] {
        self.row(sample * self.steps + step)
    }
    /// Bytes this form takes: 4 per event plus 4 per offset.
    pub fn bytes(&self) -> usize {
        4 * (self.unit_ids.len() + self.offsets.len())
    }
    /// Fraction of the `batch x steps x units` cells that hold a spike count (events / cells).
    pub fn density(&self) -> f64 {
        let cells = self.batch * self.steps * self.units;
        if cells == 0 {
            0.0
        } else {
            self.unit_ids.len() as f64 / cells as f64
        }
    }

    /// Keeps the samples listed in `samples`, in that order.
    pub fn select(&self, samples: &[usize]) -> Result<Self> {
        let mut builder = SpikeEventsBuilder::new(self.steps, self.units);
        for &s in samples {
            if s >= self.batch {
                return Err(CoreError::Spikes(format!(
                    "sample {s} out of range for a batch of {}",
                    self.batch
                )));
            }
            builder.push_sorted_sample(
                (0..self.steps).flat_map(|t| self.events(s, t).iter().map(move |&u| (t, u))),
            )?;
        }
        Ok(builder.finish())
    }
}

/// Builds a `SpikeEvents` one sample at a time.
#[derive(Clone, Debug)]
pub struct SpikeEventsBuilder {
    steps: usize,
    units: usize,
    batch: usize,
    offsets: Vec<u32>,
    unit_ids: Vec<u32>,
    scratch: Vec<(u32, u32)>,
}

impl SpikeEventsBuilder {
    pub fn new(steps: usize, units: usize) -> Self {
        Self {
            steps,
            units,
            batch: 0,
            offsets: vec![0],
            unit_ids: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Reserves room for `samples` more samples and `events` more events.
    pub fn reserve(&mut self, samples: usize, events: usize) {
        self.offsets.reserve(samples * self.steps);
        self.unit_ids.reserve(events);
    }

    /// Appends one sample from `(step, unit)` events in any order; events at `step >= steps` are an error.
    pub fn push_sample(&mut self, events: impl IntoIterator<Item = (usize, u32)>) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for (t, u) in events {
            self.check(t, u)?;
            scratch.push((t as u32, u));
        }
        scratch.sort_unstable_by_key(|&(t, _)| t);
        let result = self.push_sorted_sample(scratch.iter().map(|&(t, u)| (t as usize, u)));
        self.scratch = scratch;
        result
    }

    /// Appends one sample from `(step, unit)` events already sorted by step (faster: no sort).
    pub fn push_sorted_sample(
        &mut self,
        events: impl IntoIterator<Item = (usize, u32)>,
    ) -> Result<()> {
        let start_events = self.unit_ids.len();
        let start_offsets = self.offsets.len();
        let mut current = 0usize;
        for (t, u) in events {
            if let Err(e) = self.check(t, u).and_then(|()| {
                if t < current {
                    Err(CoreError::Spikes(format!(
                        "events not sorted by step: step {t} after step {current}"
                    )))
                } else {
                    Ok(())
                }
            }) {
                self.unit_ids.truncate(start_events);
                self.offsets.truncate(start_offsets);
                return Err(e);
            }
            while current < t {
                self.offsets.push(self.unit_ids.len() as u32);
                current += 1;
            }
            self.unit_ids.push(u);
        }
        while current < self.steps {
            self.offsets.push(self.unit_ids.len() as u32);
            current += 1;
        }
        self.batch += 1;
        Ok(())
    }

    fn check(&self, t: usize, u: u32) -> Result<()> {
        if t >= self.steps {
            return Err(CoreError::Spikes(format!(
                "event at step {t} past the {} steps",
                self.steps
            )));
        }
        if u as usize >= self.units {
            return Err(CoreError::Spikes(format!(
                "unit id {u} out of range for {} units",
                self.units
            )));
        }
        Ok(())
    }

    /// Samples pushed so far.
    pub fn len(&self) -> usize {
        self.batch
    }
    pub fn is_empty(&self) -> bool {
        self.batch == 0
    }

    pub fn finish(self) -> SpikeEvents {
        SpikeEvents {
            batch: self.batch,
            steps: self.steps,
            units: self.units,
            offsets: self.offsets,
            unit_ids: self.unit_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_round_trip_keeps_counts() {
        let counts: Vec<u8> = vec![0, 2, 1, 0, 0, 0, 3, 0, 1, 1, 0, 0];
        let s = SpikeEvents::from_dense_counts(2, 2, 3, &counts).unwrap();
        assert_eq!(s.total_events(), 8);
        assert_eq!(s.events(0, 0), &[1, 1, 2]);
        let back: Vec<u8> = s.to_dense_counts().iter().map(|&c| c as u8).collect();
        assert_eq!(back, counts);
    }

    #[test]
    fn builder_sorts_and_rejects_out_of_range() {
        let mut b = SpikeEventsBuilder::new(3, 4);
        b.push_sample([(2, 1), (0, 3), (2, 1)]).unwrap();
        assert!(b.push_sample([(3, 0)]).is_err());
        assert!(b.push_sample([(0, 4)]).is_err());
        assert!(b.push_sorted_sample([(2, 0), (1, 0)]).is_err());
        b.push_sorted_sample([(1, 2)]).unwrap();
        let s = b.finish();
        assert_eq!(s.batch(), 2);
        assert_eq!(s.events(0, 0), &[3]);
        assert_eq!(s.events(0, 2), &[1, 1]);
        assert_eq!(s.events(1, 1), &[2]);
        assert_eq!(s.select(&[1, 0]).unwrap().events(1, 2), &[1, 1]);
    }

    #[test]
    fn from_parts_checks_invariants() {
        assert!(SpikeEvents::from_parts(1, 2, 2, vec![0, 1], vec![0]).is_err());
        assert!(SpikeEvents::from_parts(1, 2, 2, vec![0, 1, 1], vec![2]).is_err());
        assert!(SpikeEvents::from_parts(1, 2, 2, vec![0, 2, 1], vec![0]).is_err());
        assert!(SpikeEvents::from_parts(1, 2, 2, vec![0, 1, 1], vec![1]).is_ok());
    }
}
