//! Checkpoints: everything needed to continue a run exactly, in one safetensors file.
//!
//! Tensors: `w1` [N_in, N], `w2` [N, N], `w3` [N, C]; Adam's first moments `m1_w1`, `m1_w2`, `m1_w3`
//! and second moments `m2_w1`, `m2_w2`, `m2_w3` (same shapes, f32); `step` (Adam's update count),
//! `epoch` (epochs completed) and `seed` as u64 [1]. The only randomness after initialisation is the
//! batch order, a function of (seed, epoch) alone (`SpikeDataset::train_batches`), so seed and epoch
//! are the whole RNG state. Metadata: `format`, `dataset`, `method` (JSON), `settings` (JSON of
//! `RunSettings`), `network` (JSON of `NetworkConfig`, for readers), `history` (JSON of the epochs'
//! records, for the summary of a resumed run), `data_order` (the sentence above).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use s3gd_core::{HostWeights, Method, NetworkConfig, TrainerState};

use crate::record::EpochRecord;
use crate::settings::RunSettings;
use crate::tensors::{OwnedTensor, TensorFile};

pub const FORMAT: &str = "s3gd-checkpoint/1";
const DATA_ORDER: &str =
    "epoch e (from 1) trains on SpikeDataset::train_batches(batch_size, seed, e)";

/// A run's state after some epochs of one method.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub settings: RunSettings,
    pub method: Method,
    pub state: TrainerState,
    /// Epochs completed.
    pub epoch: usize,
    pub history: Vec<EpochRecord>,
}

/// The checkpoint file of `method` in a run directory: `checkpoint.safetensors` for a run of one
/// method, `checkpoint-<method>.safetensors` for `--method both`.
pub fn path_for(out: &Path, settings: &RunSettings, method: Method) -> PathBuf {
    if settings.methods().len() > 1 {
        out.join(format!("checkpoint-{}.safetensors", method.name()))
    } else {
        out.join("checkpoint.safetensors")
    }
}

fn shapes(network: &NetworkConfig) -> [[usize; 2]; 3] {
    [
        [network.inputs, network.hidden],
        [network.hidden, network.hidden],
        [network.hidden, network.classes],
    ]
}

fn weight_tensors(
    prefix: &str,
    w: &HostWeights,
    network: &NetworkConfig,
) -> Result<Vec<(String, OwnedTensor)>> {
    let shapes = shapes(network);
    ["w1", "w2", "w3"]
        .into_iter()
        .zip(w.as_array())
        .zip(shapes)
        .map(|((name, values), shape)| {
            Ok((
                format!("{prefix}{name}"),
                OwnedTensor::f32(&shape, values.iter().copied())?,
            ))
        })
        .collect()
}

fn read_weights(file: &TensorFile, prefix: &str, network: &NetworkConfig) -> Result<HostWeights> {
    let [s1, s2, s3] = shapes(network);
    Ok(HostWeights {
        w1: file.f32(&format!("{prefix}w1"), &s1)?,
        w2: file.f32(&format!("{prefix}w2"), &s2)?,
        w3: file.f32(&format!("{prefix}w3"), &s3)?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).context("serialising checkpoint metadata")
}

/// Writes `checkpoint` to `path` atomically.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let network = checkpoint.settings.network();
    let state = &checkpoint.state;
    let mut tensors = weight_tensors("", &state.weights, &network)?;
    tensors.extend(weight_tensors("m1_", &state.moment1, &network)?);
    tensors.extend(weight_tensors("m2_", &state.moment2, &network)?);
    tensors.push(("step".into(), OwnedTensor::u64_scalar(state.step)));
    tensors.push((
        "epoch".into(),
        OwnedTensor::u64_scalar(checkpoint.epoch as u64),
    ));
    tensors.push((
        "seed".into(),
        OwnedTensor::u64_scalar(checkpoint.settings.seed),
    ));
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (
            "dataset".to_string(),
            checkpoint.settings.dataset.to_string(),
        ),
        ("method".to_string(), json(&checkpoint.method)?),
        ("settings".to_string(), json(&checkpoint.settings)?),
        ("network".to_string(), json(&network)?),
        ("history".to_string(), json(&checkpoint.history)?),
        ("data_order".to_string(), DATA_ORDER.to_string()),
    ]);
    crate::tensors::write_file(path, &tensors, metadata)
}

/// Reads a checkpoint written by [`save`], checking every tensor's shape against its settings.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let file = TensorFile::read(path)?;
    let format = file.meta("format")?;
    if format != FORMAT {
        bail!(
            "{}: checkpoint format {format}, this build reads {FORMAT}",
            path.display()
        );
    }
    let parse = |key: &str| -> Result<serde_json::Value> {
        serde_json::from_str(file.meta(key)?)
            .with_context(|| format!("{}: metadata \"{key}\" is not JSON", path.display()))
    };
    let settings: RunSettings = serde_json::from_value(parse("settings")?)
        .with_context(|| format!("{}: reading the settings", path.display()))?;
    let method: Method = serde_json::from_value(parse("method")?)
        .with_context(|| format!("{}: reading the method", path.display()))?;
    let history: Vec<EpochRecord> = serde_json::from_value(parse("history")?)
        .with_context(|| format!("{}: reading the history", path.display()))?;
    let network = settings.network();
    network
        .validate()
        .with_context(|| format!("{}: the saved settings", path.display()))?;
    let seed = file.u64_scalar("seed")?;
    if seed != settings.seed {
        bail!(
            "{}: seed tensor {seed} disagrees with the settings' {}",
            path.display(),
            settings.seed
        );
    }
    let epoch = usize::try_from(file.u64_scalar("epoch")?)
        .with_context(|| format!("{}: epoch out of range", path.display()))?;
    let state = TrainerState {
        weights: read_weights(&file, "", &network)?,
        moment1: read_weights(&file, "m1_", &network)?,
        moment2: read_weights(&file, "m2_", &network)?,
        step: file.u64_scalar("step")?,
    };
    Ok(Checkpoint {
        settings,
        method,
        state,
        epoch,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::MethodChoice;
    use s3gd_core::{DatasetKind, Readout};

    #[test]
    fn round_trips_bit_for_bit() {
        let settings = RunSettings {
            dataset: DatasetKind::Shd,
            method: MethodChoice::Sparse,
            band: 0.05,
            hidden: 3,
            epochs: 4,
            batch_size: 2,
            learning_rate: 1e-3,
            readout: Readout::Sum,
            seed: u64::MAX - 1,
            train_limit: Some(10),
            test_limit: None,
            checkpoint_every: 2,
            data_dir: Some(PathBuf::from("/nowhere")),
        };
        let network = settings.network();
        let w = |k: u64| HostWeights::init(&network, s3gd_core::WeightInit::UniformFanIn, k);
        let checkpoint = Checkpoint {
            method: Method::Sparse { band: 0.05 },
            state: TrainerState {
                weights: w(1),
                moment1: w(2),
                moment2: w(3),
                step: 77,
            },
            epoch: 2,
            history: vec![EpochRecord {
                epoch: 1,
                method: "sparse".into(),
                test_acc: 0.5,
                ..Default::default()
            }],
            settings,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        save(&path, &checkpoint).unwrap();
        assert_eq!(load(&path).unwrap(), checkpoint);
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
