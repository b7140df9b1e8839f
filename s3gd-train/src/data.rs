//! Loading a dataset's splits for a run, applying the sample limits, checking that they fit the
//! network, and saying which data is used (full set, embedded sample or fixture).

use std::path::Path;

use anyhow::{bail, Context, Result};
use s3gd_core::{DatasetKind, NetworkConfig};
use s3gd_data::{DataSource, SpikeDataset};

/// The train and test splits a run uses, after limits.
#[derive(Clone, Debug)]
pub struct RunData {
    pub train: SpikeDataset,
    pub test: SpikeDataset,
    pub source: DataSource,
}

impl RunData {
    /// One line saying what the data is, for logs, config.json and the summary.
    pub fn describe(&self) -> String {
        format!(
            "{}; {} train and {} test samples",
            self.source,
            self.train.len(),
            self.test.len()
        )
    }

    /// Errors if the splits' shapes do not fit `network`.
    pub fn check_fits(&self, network: &NetworkConfig) -> Result<()> {
        for (name, split) in [("train", &self.train), ("test", &self.test)] {
            if split.steps() != network.steps
                || split.inputs() != network.inputs
                || split.classes() != network.classes
            {
                bail!(
                    "the {name} split has {} steps x {} inputs and {} classes, the network expects {} x {} and {}",
                    split.steps(),
                    split.inputs(),
                    split.classes(),
                    network.steps,
                    network.inputs,
                    network.classes
                );
            }
            if split.is_empty() {
                bail!("the {name} split is empty");
            }
        }
        Ok(())
    }
}

/// Loads `dataset` from `data_dir` with the class-balanced limits applied, and logs what it loaded.
pub fn load(
    dataset: DatasetKind,
    data_dir: &Path,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<RunData> {
    let splits = s3gd_data::load(dataset, data_dir)
        .with_context(|| format!("loading {dataset} from {}", data_dir.display()))?;
    let (full_train, full_test) = (splits.train.len(), splits.test.len());
    let limit = |split: SpikeDataset, n: Option<usize>| match n {
        Some(n) => split.limit(n),
        None => split,
    };
    let data = RunData {
        train: limit(splits.train, train_limit),
        test: limit(splits.test, test_limit),
        source: splits.source,
    };
    tracing::info!("data: {dataset}, {}", data.source);
    if data.train.len() < full_train || data.test.len() < full_test {
        tracing::info!(
            "data: limited to {} of {full_train} train and {} of {full_test} test samples (class-balanced)",
            data.train.len(),
            data.test.len()
        );
    } else {
        tracing::info!(
            "data: {} train and {} test samples",
            data.train.len(),
            data.test.len()
        );
    }
    Ok(data)
}
