//! `grads`: the dense and sparse gradients of one batch of real data, from the initial weights or a
//! checkpoint's, written as one safetensors file (for Fig. 1B and for anyone checking the engine).
//!
//! Tensors (all f32): `w1` [N_in, N], `w2` [N, N], `w3` [N, C], `input` [B, T, N_in] (spike counts),
//! `labels` [B], and for M in {dense, sparse}: `M.grad_w1`, `M.grad_w2`, `M.grad_w3`, `M.grad_s1`
//! [B, T, N] (the gradient reaching layer 1's spikes; zero outside layer 1's active entries for
//! sparse), `M.loss` [1]. Metadata: beta, beta_readout, theta, band, readout, dataset, and extras
//! (seed, batch_size, hidden, steps, weights, data, sparse.active_l1/l2).
//! The batch is the first one a training run with the same seed sees: `train_batches(B, seed, 1)[0]`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use s3gd_core::backend::terms;
use s3gd_core::lif::THRESHOLD;
use s3gd_core::{Backend, DatasetKind, HostTape, HostWeights, Method, NetworkConfig, Trainer};

use crate::cli::GradsArgs;
use crate::data::RunData;
use crate::settings::{self, network_for, DEFAULT_SEED};
use crate::tensors::OwnedTensor;

/// Everything `grads` needs, resolved from the command line and the checkpoint.
#[derive(Clone, Debug)]
pub struct GradsPlan {
    pub dataset: DatasetKind,
    pub network: NetworkConfig,
    pub weights: HostWeights,
    /// Where the weights came from, for the metadata.
    pub weights_from: String,
    pub band: f64,
    pub seed: u64,
    pub batch_size: usize,
    pub data_dir: PathBuf,
    pub out: PathBuf,
}

/// Resolves `args` (reading the checkpoint, if any) into a plan.
pub fn plan(args: &GradsArgs) -> Result<GradsPlan> {
    let data_dir = settings::data_dir(args.env.data_dir.as_deref());
    let given_dataset: Option<DatasetKind> = args.dataset.map(Into::into);
    if let Some(path) = &args.checkpoint {
        let saved = crate::checkpoint::load(path)?;
        let s = &saved.settings;
        let mut conflicts = Vec::new();
        if given_dataset.is_some_and(|d| d != s.dataset) {
            conflicts.push(format!("--dataset (the checkpoint is {})", s.dataset));
        }
        if args.hidden.is_some_and(|h| h != s.hidden) {
            conflicts.push(format!("--hidden (the checkpoint has {})", s.hidden));
        }
        if args
            .readout
            .is_some_and(|r| s3gd_core::Readout::from(r) != s.readout)
        {
            conflicts.push(format!("--readout (the checkpoint has {})", s.readout));
        }
        if !conflicts.is_empty() {
            bail!(
                "{} disagrees with the network in {}",
                conflicts.join(", "),
                path.display()
            );
        }
        return Ok(GradsPlan {
            dataset: s.dataset,
            network: s.network(),
            weights: saved.state.weights,
            weights_from: format!(
                "checkpoint {} ({} after epoch {}, step {})",
                path.display(),
                saved.method.name(),
                saved.epoch,
                saved.state.step
            ),
            band: args.band,
            seed: args.seed.unwrap_or(s.seed),
            batch_size: args.batch_size,
            data_dir,
            out: args.out.clone(),
        });
    }
    let dataset = given_dataset.unwrap_or(DatasetKind::Fmnist);
    let preset = dataset.preset();
    let seed = args.seed.unwrap_or(DEFAULT_SEED);
    let network = network_for(
        dataset,
        args.hidden.unwrap_or(preset.hidden),
        args.readout.map(Into::into).unwrap_or(preset.readout),
        preset.learning_rate,
    );
    network.validate()?;
    Ok(GradsPlan {
        dataset,
        weights: HostWeights::init(&network, preset.init, seed),
        network,
        weights_from: format!("initial weights drawn from seed {seed}"),
        band: args.band,
        seed,
        batch_size: args.batch_size,
        data_dir,
        out: args.out.clone(),
    })
}

/// Fraction of a tape's B x T x N entries that are active (1 for a dense tape).
fn active_fraction(tape: &HostTape, cells: usize) -> f64 {
    match tape {
        HostTape::Sparse { entries, .. } => entries.len() as f64 / cells.max(1) as f64,
        HostTape::Dense { .. } => 1.0,
        HostTape::Nothing => 0.0,
    }
}

/// Computes both methods' gradients of the plan's batch and writes the file.
pub fn write<B: Backend>(backend: &B, plan: &GradsPlan, data: &RunData) -> Result<()> {
    let network = &plan.network;
    data.check_fits(network)?;
    let Some(indices) = data
        .train
        .train_batches(plan.batch_size, plan.seed, 1)
        .into_iter()
        .next()
    else {
        bail!(
            "--batch-size {} is larger than the {} training samples",
            plan.batch_size,
            data.train.len()
        );
    };
    let (events, labels) = data.train.try_batch(&indices)?;
    let trainer = Trainer::new(backend, *network, Method::Dense, &plan.weights)?;
    let (b, t, n, n_in, c) = (
        labels.len(),
        network.steps,
        network.hidden,
        network.inputs,
        network.classes,
    );
    let mut tensors = vec![
        (
            "w1".to_string(),
            OwnedTensor::f32(&[n_in, n], plan.weights.w1.iter().copied())?,
        ),
        (
            "w2".to_string(),
            OwnedTensor::f32(&[n, n], plan.weights.w2.iter().copied())?,
        ),
        (
            "w3".to_string(),
            OwnedTensor::f32(&[n, c], plan.weights.w3.iter().copied())?,
        ),
        (
            "input".to_string(),
            OwnedTensor::f32(
                &[b, t, n_in],
                events.to_dense_counts().into_iter().map(f32::from),
            )?,
        ),
        (
            "labels".to_string(),
            OwnedTensor::f32(&[b], labels.iter().map(|&l| l as f32))?,
        ),
    ];
    let mut metadata = HashMap::from([
        ("beta".to_string(), network.beta.to_string()),
        ("beta_readout".to_string(), network.readout.beta.to_string()),
        ("theta".to_string(), THRESHOLD.to_string()),
        ("band".to_string(), plan.band.to_string()),
        ("readout".to_string(), network.readout.mode.to_string()),
        ("dataset".to_string(), plan.dataset.to_string()),
        ("seed".to_string(), plan.seed.to_string()),
        ("batch_size".to_string(), b.to_string()),
        ("hidden".to_string(), n.to_string()),
        ("steps".to_string(), t.to_string()),
        ("weights".to_string(), plan.weights_from.clone()),
        ("data".to_string(), data.source.to_string()),
    ]);
    for method in [Method::Dense, Method::Sparse { band: plan.band }] {
        let name = method.name();
        let grads = trainer
            .gradients(backend, &events, &labels, method)
            .with_context(|| format!("{name} gradients"))?;
        let [g1, g2, g3] = &grads.weights;
        tensors.push((
            format!("{name}.grad_w1"),
            OwnedTensor::f32_from_f64(&[n_in, n], g1)?,
        ));
        tensors.push((
            format!("{name}.grad_w2"),
            OwnedTensor::f32_from_f64(&[n, n], g2)?,
        ));
        tensors.push((
            format!("{name}.grad_w3"),
            OwnedTensor::f32_from_f64(&[n, c], g3)?,
        ));
        tensors.push((
            format!("{name}.grad_s1"),
            OwnedTensor::f32_from_f64(&[b, t, n], &grads.spikes1)?,
        ));
        let loss = grads.terms.get(terms::TOTAL).copied().unwrap_or(f64::NAN);
        tensors.push((
            format!("{name}.loss"),
            OwnedTensor::f32_from_f64(&[1], &[loss])?,
        ));
        if let Method::Sparse { .. } = method {
            for (k, tape) in grads.tapes.iter().enumerate() {
                let active = active_fraction(tape, b * t * n);
                metadata.insert(format!("sparse.active_l{}", k + 1), active.to_string());
            }
        }
        tracing::info!("{name}: loss {loss:.6}");
    }
    crate::tensors::write_file(&plan.out, &tensors, metadata)?;
    tracing::info!(
        "wrote {} ({b} samples of {}, {})",
        plan.out.display(),
        plan.dataset,
        plan.weights_from
    );
    Ok(())
}
