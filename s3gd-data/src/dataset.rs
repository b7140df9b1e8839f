//! `SpikeDataset`: one split of any dataset held compactly, with batching and epoch shuffling.
//!
//! Storage: Fashion-MNIST keeps one u8 per pixel, its first-spike step (`encode::NEVER` = none);
//! N-MNIST and SHD keep their binned events sorted by step, one u16 unit per event, with the end of
//! every step relative to the sample's first event. `batch` turns either form into `SpikeEvents` with
//! two allocations (offsets and unit ids, both sized exactly), by a counting sort on the step.
//! Invariants: every label < classes, every unit < inputs (<= 65,536), every step < steps.
//! Shuffling depends on (seed, epoch) alone through a SplitMix64 stream and a Fisher-Yates shuffle
//! written here, so the order never changes with a dependency's version and a resumed run sees the
//! same batches.

use std::fmt;
use std::path::PathBuf;

use s3gd_core::{SpikeEvents, SpikeEventsBuilder};

use crate::encode::{ttfs_table, NEVER};
use crate::error::DataError;
use crate::idx::IdxImages;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Store {
    /// `len * inputs` first-spike steps, [`NEVER`] for no spike.
    FirstSpike { first_steps: Vec<u8> },
    /// Events of sample `s`: `units[sample_starts[s]..sample_starts[s + 1]]`, sorted by step; step `t`
    /// of sample `s` ends at `sample_starts[s] + step_ends[s * steps + t]`.
    Events {
        sample_starts: Vec<u64>,
        step_ends: Vec<u32>,
        units: Vec<u16>,
    },
}

/// One split (train or test) of a dataset, ready to be cut into batches of spike rasters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpikeDataset {
    steps: usize,
    inputs: usize,
    classes: usize,
    labels: Vec<u8>,
    store: Store,
}

/// Spikes per sample over a dataset (the input activity the network sees).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpikeStats {
    pub samples: usize,
    pub mean: f64,
    pub min: usize,
    pub max: usize,
    /// Spikes / (samples * steps * inputs): the fraction of input cells that hold a spike.
    pub density: f64,
}

impl fmt::Display for SpikeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples, spikes per sample mean {:.1} (min {}, max {}), {:.3}% of input cells",
            self.samples,
            self.mean,
            self.min,
            self.max,
            100.0 * self.density
        )
    }
}

fn invalid(what: String) -> DataError {
    DataError::InvalidArgument { what }
}

fn check_labels(labels: &[u8], classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(i) => Err(invalid(format!(
            "label {} of sample {i} is out of range for {classes} classes",
            labels[i]
        ))),
        None => Ok(()),
    }
}

/// `SpikeEvents` offsets are u32: a batch holds fewer than 2^32 events.
fn check_batch_events(total: u64) -> Result<(), DataError> {
    if total > u64::from(u32::MAX) {
        return Err(invalid(format!(
            "a batch of {total} events does not fit u32 offsets; use smaller batches"
        )));
    }
    Ok(())
}

impl SpikeDataset {
    /// Fashion-MNIST style: first-spike steps per pixel (`len * inputs`, [`NEVER`] = no spike).
    pub fn from_first_spike_steps(
        first_steps: Vec<u8>,
        labels: Vec<u8>,
        steps: usize,
        inputs: usize,
        classes: usize,
    ) -> Result<Self, DataError> {
        if inputs == 0 || first_steps.len() != labels.len() * inputs {
            return Err(invalid(format!(
                "{} first-spike steps for {} samples of {inputs} inputs",
                first_steps.len(),
                labels.len()
            )));
        }
        if let Some(bad) = first_steps
            .iter()
            .find(|&&t| t != NEVER && t as usize >= steps)
        {
            return Err(invalid(format!(
                "first-spike step {bad} past the {steps} steps"
            )));
        }
        check_labels(&labels, classes)?;
        Ok(Self {
            steps,
            inputs,
            classes,
            labels,
            store: Store::FirstSpike { first_steps },
        })
    }

    /// Fashion-MNIST images encoded by time to first spike (SPEC section 2) over `steps` steps.
    pub fn from_images(
        images: &IdxImages,
        labels: &[u8],
        steps: usize,
        classes: usize,
    ) -> Result<Self, DataError> {
        if images.count != labels.len() {
            return Err(invalid(format!(
                "{} images but {} labels",
                images.count,
                labels.len()
            )));
        }
        let table = ttfs_table(steps);
        let first_steps = images.pixels.iter().map(|&p| table[p as usize]).collect();
        Self::from_first_spike_steps(
            first_steps,
            labels.to_vec(),
            steps,
            images.rows * images.cols,
            classes,
        )
    }

    /// Samples in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Time steps T of every sample.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// Input units of every sample.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Label of every sample, in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// How many samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Spikes (events, counting repeats) of sample `index`.
    pub fn spike_count(&self, index: usize) -> usize {
        match &self.store {
            Store::FirstSpike { first_steps } => first_steps
                [index * self.inputs..(index + 1) * self.inputs]
                .iter()
                .filter(|&&t| t != NEVER)
                .count(),
            Store::Events { sample_starts, .. } => {
                (sample_starts[index + 1] - sample_starts[index]) as usize
            }
        }
    }

    /// Spikes-per-sample statistics over the whole split.
    pub fn spike_stats(&self) -> SpikeStats {
        let counts: Vec<usize> = (0..self.len()).map(|i| self.spike_count(i)).collect();
        let total: usize = counts.iter().sum();
        let samples = counts.len();
        let cells = samples * self.steps * self.inputs;
        SpikeStats {
            samples,
            mean: if samples == 0 {
                0.0
            } else {
                total as f64 / samples as f64
            },
            min: counts.iter().copied().min().unwrap_or(0),
            max: counts.iter().copied().max().unwrap_or(0),
            density: if cells == 0 {
                0.0
            } else {
                total as f64 / cells as f64
            },
        }
    }

    fn check_indices(&self, indices: &[usize]) -> Result<(), DataError> {
        match indices.iter().find(|&&i| i >= self.len()) {
            Some(bad) => Err(invalid(format!(
                "sample index {bad} out of range for a split of {}",
                self.len()
            ))),
            None => Ok(()),
        }
    }

    /// The spike rasters and labels of the samples at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is `>= len()`, like slice indexing; [`SpikeDataset::try_batch`] returns an error instead.
    pub fn batch(&self, indices: &[usize]) -> (SpikeEvents, Vec<u32>) {
        match self.try_batch(indices) {
            Ok(batch) => batch,
            Err(e) => panic!("SpikeDataset::batch: {e}"),
        }
    }

    /// [`SpikeDataset::batch`] that returns an error for an index out of range.
    pub fn try_batch(&self, indices: &[usize]) -> Result<(SpikeEvents, Vec<u32>), DataError> {
        self.check_indices(indices)?;
        let steps = self.steps;
        let mut offsets: Vec<u32> = Vec::with_capacity(indices.len() * steps + 1);
        offsets.push(0);
        let unit_ids = match &self.store {
            Store::FirstSpike { first_steps } => {
                let total: usize = indices.iter().map(|&i| self.spike_count(i)).sum();
                check_batch_events(total as u64)?;
                let mut unit_ids = vec![0u32; total];
                // Per sample: count spikes per step, turn counts into write positions, place units.
                // Units of one step come out in ascending order.
                let mut cursor = vec![0u32; steps];
                let mut written = 0u32;
                for &i in indices {
                    let pixels = &first_steps[i * self.inputs..(i + 1) * self.inputs];
                    cursor.fill(0);
                    for &t in pixels {
                        if t != NEVER {
                            cursor[t as usize] += 1;
                        }
                    }
                    for slot in cursor.iter_mut() {
                        let count = *slot;
                        *slot = written;
                        written += count;
                        offsets.push(written);
                    }
                    for (unit, &t) in pixels.iter().enumerate() {
                        if t != NEVER {
                            let at = &mut cursor[t as usize];
                            unit_ids[*at as usize] = unit as u32;
                            *at += 1;
                        }
                    }
                }
                unit_ids
            }
            Store::Events {
                sample_starts,
                step_ends,
                units,
            } => {
                let total: u64 = indices
                    .iter()
                    .map(|&i| sample_starts[i + 1] - sample_starts[i])
                    .sum();
                check_batch_events(total)?;
                let mut unit_ids = Vec::with_capacity(total as usize);
                for &i in indices {
                    let base = unit_ids.len() as u32;
                    offsets.extend(
                        step_ends[i * steps..(i + 1) * steps]
                            .iter()
                            .map(|&end| base + end),
                    );
                    let sample = sample_starts[i] as usize..sample_starts[i + 1] as usize;
                    unit_ids.extend(units[sample].iter().map(|&u| u32::from(u)));
                }
                unit_ids
            }
        };
        let labels = indices.iter().map(|&i| u32::from(self.labels[i])).collect();
        let events = SpikeEvents::from_parts(indices.len(), steps, self.inputs, offsets, unit_ids)
            .map_err(|e| invalid(format!("building a batch: {e}")))?;
        Ok((events, labels))
    }

    /// The samples at `indices` through the slow, plain builder: the reference `try_batch` is tested against.
    pub fn batch_reference(&self, indices: &[usize]) -> Result<SpikeEvents, DataError> {
        self.check_indices(indices)?;
        let mut builder = SpikeEventsBuilder::new(self.steps, self.inputs);
        for &i in indices {
            let events: Vec<(usize, u32)> = match &self.store {
                Store::FirstSpike { first_steps } => first_steps
                    [i * self.inputs..(i + 1) * self.inputs]
                    .iter()
                    .enumerate()
                    .filter(|(_, &t)| t != NEVER)
                    .map(|(u, &t)| (t as usize, u as u32))
                    .collect(),
                Store::Events {
                    sample_starts,
                    step_ends,
                    units,
                } => {
                    let start = sample_starts[i] as usize;
                    let mut out = Vec::new();
                    let mut begin = 0usize;
                    for t in 0..self.steps {
                        let end = step_ends[i * self.steps + t] as usize;
                        out.extend(
                            units[start + begin..start + end]
                                .iter()
                                .map(|&u| (t, u32::from(u))),
                        );
                        begin = end;
                    }
                    out
                }
            };
            // A stable sort by step keeps the stored order within a step, as `try_batch` does.
            let mut events = events;
            events.sort_by_key(|&(t, _)| t);
            builder
                .push_sorted_sample(events)
                .map_err(|e| invalid(format!("reference batch: {e}")))?;
        }
        Ok(builder.finish())
    }

    /// The training batches of one epoch: a shuffle of all samples fixed by (seed, epoch) alone, cut
    /// into batches of `batch_size`; the last partial batch is dropped (as the paper). Empty if
    /// `batch_size` is 0 or larger than the split.
    pub fn train_batches(&self, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        if batch_size == 0 {
            return Vec::new();
        }
        let order = shuffled_indices(self.len(), seed, epoch);
        order
            .chunks_exact(batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The evaluation batches: every sample once, in order; the last batch may be partial. Empty if
    /// `batch_size` is 0.
    pub fn eval_batches(&self, batch_size: usize) -> Vec<Vec<usize>> {
        if batch_size == 0 {
            return Vec::new();
        }
        let all: Vec<usize> = (0..self.len()).collect();
        all.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }

    /// The samples at `indices`, in that order, as a new split.
    pub fn subset(&self, indices: &[usize]) -> Result<Self, DataError> {
        self.check_indices(indices)?;
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        let store = match &self.store {
            Store::FirstSpike { first_steps } => Store::FirstSpike {
                first_steps: indices
                    .iter()
                    .flat_map(|&i| &first_steps[i * self.inputs..(i + 1) * self.inputs])
                    .copied()
                    .collect(),
            },
            Store::Events {
                sample_starts,
                step_ends,
                units,
            } => {
                let mut new_starts = Vec::with_capacity(indices.len() + 1);
                let mut new_ends = Vec::with_capacity(indices.len() * self.steps);
                let mut new_units = Vec::new();
                new_starts.push(0);
                for &i in indices {
                    new_units.extend_from_slice(
                        &units[sample_starts[i] as usize..sample_starts[i + 1] as usize],
                    );
                    new_starts.push(new_units.len() as u64);
                    new_ends.extend_from_slice(&step_ends[i * self.steps..(i + 1) * self.steps]);
                }
                Store::Events {
                    sample_starts: new_starts,
                    step_ends: new_ends,
                    units: new_units,
                }
            }
        };
        Ok(Self {
            steps: self.steps,
            inputs: self.inputs,
            classes: self.classes,
            labels,
            store,
        })
    }

    /// The first `n` samples, class-balanced: each class gets n / classes of its first samples (the
    /// remainder and the share of classes that run short go to the other classes in class order);
    /// the kept samples stay in file order. The whole split if `n >= len()`.
    pub fn limit(&self, n: usize) -> Self {
        if n >= self.len() {
            return self.clone();
        }
        let available = self.class_counts();
        let mut quota = vec![0usize; self.classes];
        let mut left = n;
        // Round-robin over classes that still have samples: balanced, and fills from others when one runs short.
        while left > 0 {
            let mut gave = false;
            for class in 0..self.classes {
                if left > 0 && quota[class] < available[class] {
                    quota[class] += 1;
                    left -= 1;
                    gave = true;
                }
            }
            if !gave {
                break;
            }
        }
        let mut taken = vec![0usize; self.classes];
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let class = self.labels[i] as usize;
                let take = taken[class] < quota[class];
                taken[class] += usize::from(take);
                take
            })
            .collect();
        match self.subset(&keep) {
            Ok(subset) => subset,
            // Unreachable: every index in `keep` is < len().
            Err(_) => self.clone(),
        }
    }
}

/// Builds a split of binned events (N-MNIST, SHD) one sample at a time.
#[derive(Clone, Debug)]
pub struct EventDatasetBuilder {
    steps: usize,
    inputs: usize,
    classes: usize,
    labels: Vec<u8>,
    sample_starts: Vec<u64>,
    step_ends: Vec<u32>,
    units: Vec<u16>,
    dropped_late: u64,
    scratch_counts: Vec<u32>,
}

impl EventDatasetBuilder {
    /// A builder for samples of `steps` steps over `inputs` units (at most 65,536) in `classes` classes.
    pub fn new(steps: usize, inputs: usize, classes: usize) -> Result<Self, DataError> {
        if inputs == 0 || inputs > 1 << 16 {
            return Err(invalid(format!(
                "{inputs} inputs: event datasets hold 1 to 65536 units"
            )));
        }
        Ok(Self {
            steps,
            inputs,
            classes,
            labels: Vec::new(),
            sample_starts: vec![0],
            step_ends: Vec::new(),
            units: Vec::new(),
            dropped_late: 0,
            scratch_counts: vec![0; steps],
        })
    }

    /// Appends one sample from `(step, unit)` events in any order. Events at `step >= steps` are
    /// dropped (counted in [`EventDatasetBuilder::dropped_late`]); repeats add up.
    pub fn push_sample(&mut self, label: u8, events: &[(u64, u32)]) -> Result<(), DataError> {
        if label as usize >= self.classes {
            return Err(invalid(format!(
                "label {label} out of range for {} classes",
                self.classes
            )));
        }
        if let Some(&(_, unit)) = events.iter().find(|&&(_, u)| u as usize >= self.inputs) {
            return Err(invalid(format!(
                "unit {unit} out of range for {} inputs",
                self.inputs
            )));
        }
        // Per-sample step ends are u32.
        if events.len() >= u32::MAX as usize {
            return Err(invalid(format!(
                "a sample of {} events (at most 2^32 - 2)",
                events.len()
            )));
        }
        let steps = self.steps as u64;
        let counts = &mut self.scratch_counts;
        counts.fill(0);
        let mut kept = 0u32;
        for &(t, _) in events {
            if t < steps {
                counts[t as usize] += 1;
                kept += 1;
            }
        }
        self.dropped_late += (events.len() - kept as usize) as u64;
        // Counting sort by step: counts become write positions; ends are stored relative to the sample.
        let base = self.units.len();
        let mut end = 0u32;
        for slot in counts.iter_mut() {
            let count = *slot;
            *slot = end;
            end += count;
            self.step_ends.push(end);
        }
        self.units.resize(base + kept as usize, 0);
        for &(t, unit) in events {
            if t < steps {
                let at = &mut counts[t as usize];
                self.units[base + *at as usize] = unit as u16;
                *at += 1;
            }
        }
        self.sample_starts.push(self.units.len() as u64);
        self.labels.push(label);
        Ok(())
    }

    /// Events dropped so far for falling at or past the last step.
    pub fn dropped_late(&self) -> u64 {
        self.dropped_late
    }

    /// Samples pushed so far.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn finish(self) -> SpikeDataset {
        SpikeDataset {
            steps: self.steps,
            inputs: self.inputs,
            classes: self.classes,
            labels: self.labels,
            store: Store::Events {
                sample_starts: self.sample_starts,
                step_ends: self.step_ends,
                units: self.units,
            },
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fixed, and good enough to shuffle.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..bound (bound > 0), without modulo bias (Lemire's multiply-and-reject).
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

/// A permutation of 0..n fixed by (seed, epoch).
pub fn shuffled_indices(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    // Mix seed and epoch through separate streams so that (seed, epoch) pairs never collide trivially.
    let mixed = SplitMix64(seed).next() ^ SplitMix64(epoch ^ 0x6a09_e667_f3bc_c908).next();
    let mut rng = SplitMix64(mixed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Where the data of a [`Splits`] came from; printed by training so a run says what it used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The full dataset, from this directory (or these files).
    FullSet { location: PathBuf },
    /// The small class-balanced real sample committed under `datasets/sample/`.
    EmbeddedSample { location: PathBuf },
    /// Data made up in memory, by tests.
    Fixture { description: String },
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::FullSet { location } => write!(f, "full set from {}", location.display()),
            DataSource::EmbeddedSample { location } => write!(
                f,
                "embedded sample from {} (a small class-balanced subset, not the full set; \
                 run `cargo xtask fetch-data` for the full set)",
                location.display()
            ),
            DataSource::Fixture { description } => write!(f, "test fixture: {description}"),
        }
    }
}

/// The training and test splits of one dataset, and where they came from.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: SpikeDataset,
    pub test: SpikeDataset,
    pub source: DataSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_first_spike() -> SpikeDataset {
        // 3 samples x 4 inputs, 5 steps.
        let first_steps = vec![
            2, NEVER, 0, 2, //
            NEVER, NEVER, NEVER, NEVER, //
            4, 3, 2, 1,
        ];
        SpikeDataset::from_first_spike_steps(first_steps, vec![0, 1, 1], 5, 4, 2).unwrap()
    }

    #[test]
    fn first_spike_batches_match_the_plain_builder() {
        let data = toy_first_spike();
        let (events, labels) = data.batch(&[2, 0, 1, 0]);
        assert_eq!(labels, vec![1, 0, 1, 0]);
        assert_eq!(events, data.batch_reference(&[2, 0, 1, 0]).unwrap());
        assert_eq!(events.events(1, 2), &[0, 3]);
        assert_eq!(events.events(0, 4), &[0]);
        assert_eq!(events.total_events(), 10, "4 + 3 + 0 + 3 spikes");
        assert!(data.try_batch(&[3]).is_err());
    }

    #[test]
    fn event_builder_sorts_drops_late_and_keeps_repeats() {
        let mut b = EventDatasetBuilder::new(3, 5, 2).unwrap();
        b.push_sample(1, &[(2, 4), (0, 1), (2, 4), (3, 0), (0, 0)])
            .unwrap();
        b.push_sample(0, &[]).unwrap();
        assert!(b.push_sample(2, &[]).is_err());
        assert!(b.push_sample(0, &[(0, 5)]).is_err());
        assert_eq!(b.dropped_late(), 1);
        let data = b.finish();
        let (events, labels) = data.batch(&[0, 1]);
        assert_eq!(labels, vec![1, 0]);
        assert_eq!(events.events(0, 0), &[1, 0]);
        assert_eq!(events.events(0, 1), &[] as &[u32]);
        assert_eq!(events.events(0, 2), &[4, 4]);
        assert_eq!(events.to_dense_counts()[2 * 5 + 4], 2);
        assert_eq!(events, data.batch_reference(&[0, 1]).unwrap());
        assert_eq!(
            data.subset(&[1, 0]).unwrap().batch(&[1]).0.events(0, 2),
            &[4, 4]
        );
    }

    #[test]
    fn shuffles_depend_on_seed_and_epoch_only() {
        let data =
            SpikeDataset::from_first_spike_steps(vec![NEVER; 10], vec![0; 10], 1, 1, 1).unwrap();
        let a = data.train_batches(3, 7, 0);
        assert_eq!(
            a.len(),
            3,
            "10 samples in batches of 3: the partial one dropped"
        );
        assert_eq!(a, data.train_batches(3, 7, 0));
        assert_ne!(a, data.train_batches(3, 7, 1));
        assert_ne!(a, data.train_batches(3, 8, 0));
        let mut seen: Vec<usize> = a.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9);
        let eval = data.eval_batches(4);
        assert_eq!(eval, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert!(data.train_batches(0, 1, 1).is_empty());
        // The order is pinned: a change here breaks resumed runs.
        assert_eq!(shuffled_indices(8, 1, 2), vec![4, 2, 6, 3, 5, 7, 0, 1]);
    }

    #[test]
    fn limit_is_class_balanced_and_keeps_file_order() {
        let labels = vec![0, 0, 0, 0, 1, 2, 2, 2, 0, 2];
        let data = SpikeDataset::from_first_spike_steps(vec![NEVER; 10], labels, 1, 1, 3).unwrap();
        let small = data.limit(6);
        // Class 1 has one sample; its share goes to classes 0 and 2.
        assert_eq!(small.class_counts(), vec![3, 1, 2]);
        assert_eq!(small.labels(), &[0, 0, 0, 1, 2, 2]);
        assert_eq!(data.limit(100), data);
    }
}
