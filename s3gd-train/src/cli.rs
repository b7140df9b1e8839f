//! The command line (clap derive): `train` (the default, so that no arguments at all trains the
//! paper's Fashion-MNIST network), `eval`, `grads` and `sweep-band`, and the value parsers that turn
//! bad values into clear messages before anything runs.
//!
//! Settings whose default depends on the dataset (the paper's hyperparameters) are `Option`s here
//! and resolved in `settings`; that also lets `--resume` tell a setting given on purpose from a default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use s3gd_core::{DatasetKind, Readout};
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;

const ABOUT: &str =
    "Train the spiking networks of Sparse Spiking Gradient Descent (Perez-Nieves & \
Goodman, NeurIPS 2021) with the dense (BPTT) or the sparse (S3GD) gradient.";

const LONG_ABOUT: &str = "Train the spiking networks of Sparse Spiking Gradient Descent (Perez-Nieves \
& Goodman, NeurIPS 2021) with the dense (BPTT) or the sparse (S3GD) gradient.

With no subcommand it trains (the `train` subcommand): with no arguments at all, the paper's \
Fashion-MNIST network (2 x 200 LIF neurons) with the sparse method on the best device found, on the \
full data if found and the embedded sample otherwise, and ends with a summary table. Every run writes \
config.json, steps.csv, epochs.csv and checkpoints under --out.

Logs go to stderr (RUST_LOG sets the level, default info); the summary table goes to stdout.";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "s3gd-train",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `train`, accepted without the subcommand name.
    #[command(flatten)]
    pub train: TrainArgs,
}

impl Cli {
    /// The subcommand to run, `train` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Train(self.train))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a network (the default when no subcommand is given).
    Train(TrainArgs),
    /// Report the test accuracy of a checkpoint.
    Eval(EvalArgs),
    /// Write the dense and sparse gradients of one batch of real data to a safetensors file.
    Grads(GradsArgs),
    /// Train the sparse method once per band half-width h (and dense once as the reference): Fig. 3.
    SweepBand(SweepArgs),
}

/// The dataset, and with it the paper's hyperparameters (SPEC section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// Fashion-MNIST: T = 100 steps of 1 ms, 784 inputs (time to first spike), 10 classes, lr 2e-4.
    #[value(alias = "fashion-mnist")]
    Fmnist,
    /// N-MNIST: T = 300 steps of 1 ms, 1156 inputs, 10 classes, lr 2e-4.
    #[value(alias = "n-mnist")]
    Nmnist,
    /// Spiking Heidelberg Digits: T = 500 steps of 2 ms, 700 inputs, 20 classes, lr 1e-3.
    Shd,
}

impl From<DatasetArg> for DatasetKind {
    fn from(arg: DatasetArg) -> Self {
        match arg {
            DatasetArg::Fmnist => DatasetKind::Fmnist,
            DatasetArg::Nmnist => DatasetKind::Nmnist,
            DatasetArg::Shd => DatasetKind::Shd,
        }
    }
}

/// How a GPU's cuBLAS GEMMs compute (the dense method's weight and input gradients, and the sparse
/// method's GEMM path where it is chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GemmArg {
    /// IEEE fp32 products and sums.
    Fp32,
    /// TF32 tensor cores: inputs rounded to 10-bit mantissas (~1e-3 relative per product).
    Tf32,
    /// Three TF32 products per GEMM over operands split in two: ~22-bit products, 2-3x faster
    /// than fp32 on large GEMMs.
    Tf32x3,
    /// Products from exact int8 tensor-core GEMMs over operands split into four 7-bit slices
    /// below each row's power of two: closer to f64 than fp32 GEMMs on typical data, 2x faster.
    Int8Split,
    /// TF32's 11 significant bits from fp16 tensor cores: each operand row scaled by a power of two
    /// and rounded to fp16, one GEMM with f32 sums, scaled back exactly.
    Fp16Scaled,
    /// f32 GEMMs on f64 tensor cores: operands widened to f64, exact products and f64 sums, each
    /// output rounded once to f32: closer to the exact product than fp32 GEMMs, and faster on an
    /// H200.
    Fp64Widened,
}

impl From<GemmArg> for s3gd_kernels::GemmPrecision {
    fn from(arg: GemmArg) -> Self {
        match arg {
            GemmArg::Fp32 => Self::Fp32,
            GemmArg::Tf32 => Self::Tf32,
            GemmArg::Tf32x3 => Self::Tf32x3,
            GemmArg::Int8Split => Self::Int8Split,
            GemmArg::Fp16Scaled => Self::Fp16Scaled,
            GemmArg::Fp64Widened => Self::Fp64Widened,
        }
    }
}

/// Which gradient method(s) a run trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodChoice {
    /// Plain backpropagation through time with the full surrogate derivative.
    Dense,
    /// S3GD: the backward pass only over neurons with |V - theta| < h.
    Sparse,
    /// Dense, then sparse, from the same seed, initial weights and batch order.
    Both,
}

impl MethodChoice {
    pub fn name(self) -> &'static str {
        match self {
            MethodChoice::Dense => "dense",
            MethodChoice::Sparse => "sparse",
            MethodChoice::Both => "both",
        }
    }
}

/// How the readout turns its trace into logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadoutArg {
    /// The maximum over time of the readout trace (the paper's default).
    Max,
    /// The sum over time of the readout trace (the reference's later SHD runs).
    Sum,
}

impl From<ReadoutArg> for Readout {
    fn from(arg: ReadoutArg) -> Self {
        match arg {
            ReadoutArg::Max => Readout::Max,
            ReadoutArg::Sum => Readout::Sum,
        }
    }
}

/// Where the data is and which device runs the work; shared by every subcommand.
#[derive(Clone, Debug, Args)]
pub struct EnvArgs {
    /// Device: auto (a CUDA GPU if this build can open one, else the CPU), cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,

    /// CPU worker threads [default: all cores]. Ignored on a GPU.
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub threads: Option<usize>,

    /// GPU GEMM precision: fp32, tf32, tf32x3, int8-split, fp16-scaled or fp64-widened (see
    /// docs/gpu.md).
    /// Ignored on the CPU.
    #[arg(long, value_enum, value_name = "PRECISION", default_value = "fp32")]
    pub gemm: GemmArg,

    /// Data directory holding fashion-mnist/, nmnist/ and shd/ [default: $S3GD_DATA_DIR, else the
    /// workspace's datasets/]. Fashion-MNIST also falls back to /usr/share/datasets/fashion-mnist, then
    /// to the embedded sample.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Settings of a training run shared by `train` and `sweep-band`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Dataset, with the paper's hyperparameters for it as the defaults [default: fmnist].
    #[arg(long, value_enum, value_name = "DATASET")]
    pub dataset: Option<DatasetArg>,

    /// Hidden neurons per layer (both layers) [default: the paper's, 200].
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub hidden: Option<usize>,

    /// Training epochs [default: the paper's: 100 for fmnist and nmnist, 200 for shd]. With --resume,
    /// a larger value extends the run.
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub epochs: Option<usize>,

    /// Samples per batch; the last partial batch of an epoch is dropped, as in the paper [default: 256].
    #[arg(long, value_name = "B", value_parser = parse_positive_usize)]
    pub batch_size: Option<usize>,

    /// Adam learning rate [default: the paper's: 2e-4 for fmnist and nmnist, 1e-3 for shd].
    #[arg(long, value_name = "RATE", allow_negative_numbers = true, value_parser = parse_positive_f64)]
    pub lr: Option<f64>,

    /// Readout: logits as the max or the sum over time of the readout trace [default: max].
    #[arg(long, value_enum, value_name = "MODE")]
    pub readout: Option<ReadoutArg>,

    /// Seed of the initial weights and of the batch order (which depends on seed and epoch only)
    /// [default: 0].
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,

    /// Output directory for config.json, steps.csv, epochs.csv and checkpoints
    /// [default: runs/<dataset>-<method>-<UTC time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Train on the first N training samples only, class-balanced [default: all].
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub train_limit: Option<usize>,

    /// Test on the first N test samples only, class-balanced [default: all].
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub test_limit: Option<usize>,

    /// Write a checkpoint every N epochs (0: only at the end; one is always written at the end)
    /// [default: 1].
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,

    #[command(flatten)]
    pub env: EnvArgs,
}

/// `train`: one run with the dense method, the sparse method, or both.
#[derive(Clone, Debug, Args)]
pub struct TrainArgs {
    /// Gradient method [default: sparse]. `both` trains dense, then sparse, from the same seed,
    /// initial weights and batch order, and the summary compares them.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub method: Option<MethodChoice>,

    /// Half-width h of the sparse method's active band |V - theta| < h; must be > 0 [default: 0.2].
    #[arg(long, value_name = "H", allow_negative_numbers = true, value_parser = parse_band)]
    pub band: Option<f64>,

    /// Continue the run in DIR from its checkpoints, with its saved settings; ends exactly where an
    /// uninterrupted run would. Only --epochs (to extend), --checkpoint-every, --device, --threads and
    /// --data-dir may be given with it.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// `eval`: test accuracy of a checkpoint.
#[derive(Clone, Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint.safetensors written by `train`.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,

    /// Dataset to test on [default: the checkpoint's]; must match the checkpoint's network.
    #[arg(long, value_enum, value_name = "DATASET")]
    pub dataset: Option<DatasetArg>,

    /// Samples per evaluation batch [default: the checkpoint's batch size].
    #[arg(long, value_name = "B", value_parser = parse_positive_usize)]
    pub batch_size: Option<usize>,

    /// Test on the first N test samples only, class-balanced [default: all].
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub test_limit: Option<usize>,

    #[command(flatten)]
    pub env: EnvArgs,
}

/// `grads`: the gradients of one batch, dense and sparse, for Fig. 1B and for outside checks.
#[derive(Clone, Debug, Args)]
pub struct GradsArgs {
    /// Dataset [default: the checkpoint's, else fmnist].
    #[arg(long, value_enum, value_name = "DATASET")]
    pub dataset: Option<DatasetArg>,

    /// Samples in the batch: the first batch the training run with this seed sees.
    #[arg(long, value_name = "B", default_value_t = 32, value_parser = parse_positive_usize)]
    pub batch_size: usize,

    /// Half-width h of the sparse method's active band; must be > 0.
    #[arg(
        long,
        value_name = "H",
        default_value_t = s3gd_core::DEFAULT_BAND,
        allow_negative_numbers = true,
        value_parser = parse_band
    )]
    pub band: f64,

    /// Seed of the initial weights (without --checkpoint) and of the batch order [default: the
    /// checkpoint's seed, else 0].
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,

    /// Hidden neurons per layer, for initial weights [default: the checkpoint's, else 200].
    #[arg(long, value_name = "N", value_parser = parse_positive_usize)]
    pub hidden: Option<usize>,

    /// Readout mode [default: the checkpoint's, else the dataset's: max].
    #[arg(long, value_enum, value_name = "MODE")]
    pub readout: Option<ReadoutArg>,

    /// Take the weights from this checkpoint instead of the initial weights.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,

    /// The safetensors file to write (written whole or not at all).
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,

    #[command(flatten)]
    pub env: EnvArgs,
}

/// `sweep-band`: the sparse method at each band, plus dense once as the reference.
#[derive(Clone, Debug, Args)]
pub struct SweepArgs {
    /// Band half-widths h to train with, comma-separated; each must be > 0.
    #[arg(
        long,
        value_name = "H,H,...",
        value_delimiter = ',',
        num_args = 1..,
        allow_negative_numbers = true,
        default_value = "0.25,0.2,0.1,0.05,0.01,0.001",
        value_parser = parse_band
    )]
    pub bands: Vec<f64>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// A whole number >= 1.
pub fn parse_positive_usize(s: &str) -> Result<usize, String> {
    let value: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if value == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(value)
    }
}

/// A finite number > 0.
pub fn parse_positive_f64(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("must be a positive finite number, got {s}"))
    }
}

/// The band half-width h: a finite number > 0.
pub fn parse_band(s: &str) -> Result<f64, String> {
    parse_positive_f64(s).map_err(|why| {
        format!("{why}: the band half-width h must be > 0 (the paper's default is 0.2)")
    })
}

pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Cli::try_parse_from(std::iter::once("s3gd-train").chain(args.iter().copied()))
            .map(Cli::into_command)
            .map_err(|e| e.to_string())
    }

    fn train(args: &[&str]) -> TrainArgs {
        match parse(args) {
            Ok(Command::Train(t)) => t,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn every_gemm_precision_parses() {
        for (name, want) in [
            ("fp32", GemmArg::Fp32),
            ("tf32", GemmArg::Tf32),
            ("tf32x3", GemmArg::Tf32x3),
            ("int8-split", GemmArg::Int8Split),
            ("fp16-scaled", GemmArg::Fp16Scaled),
            ("fp64-widened", GemmArg::Fp64Widened),
        ] {
            assert_eq!(train(&["--gemm", name]).run.env.gemm, want, "{name}");
        }
    }

    #[test]
    fn no_arguments_trains_with_the_defaults() {
        let t = train(&[]);
        assert_eq!(t.method, None);
        assert_eq!(t.run.dataset, None);
        assert_eq!(t.run.env.device, DeviceChoice::Auto);
        assert_eq!(t.run.env.gemm, GemmArg::Fp32);
        let s = crate::settings::for_train(&t);
        assert_eq!(s.dataset, DatasetKind::Fmnist);
        assert_eq!(s.method, MethodChoice::Sparse);
        assert_eq!((s.hidden, s.epochs, s.batch_size), (200, 100, 256));
        assert_eq!((s.band, s.learning_rate, s.seed), (0.2, 2e-4, 0));
        let shd = crate::settings::for_train(&train(&["--dataset", "shd"]));
        assert_eq!((shd.epochs, shd.learning_rate), (200, 1e-3));
    }

    #[test]
    fn every_option_parses_with_or_without_the_subcommand_name() {
        let args = [
            "--dataset",
            "nmnist",
            "--method",
            "both",
            "--hidden",
            "16",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--band",
            "0.05",
            "--readout",
            "sum",
            "--seed",
            "7",
            "--device",
            "cuda:1",
            "--out",
            "o",
            "--train-limit",
            "64",
            "--test-limit",
            "32",
            "--checkpoint-every",
            "0",
            "--data-dir",
            "d",
            "--threads",
            "2",
            "--gemm",
            "tf32x3",
        ];
        let t = train(&args);
        let with_name = train(&[&["train"], &args[..]].concat());
        assert_eq!(format!("{t:?}"), format!("{with_name:?}"));
        assert_eq!(t.run.env.device, DeviceChoice::Cuda(1));
        assert_eq!(t.run.env.gemm, GemmArg::Tf32x3);
        let s = crate::settings::for_train(&t);
        assert_eq!(s.dataset, DatasetKind::Nmnist);
        assert_eq!(s.readout, Readout::Sum);
        assert_eq!(s.methods().len(), 2);
        assert_eq!(
            (s.train_limit, s.test_limit, s.checkpoint_every),
            (Some(64), Some(32), 0)
        );
        match parse(&["sweep-band", "--bands", "0.1,0.01", "--epochs", "1"]) {
            Ok(Command::SweepBand(sweep)) => assert_eq!(sweep.bands, vec![0.1, 0.01]),
            other => panic!("{other:?}"),
        }
        match parse(&["sweep-band"]) {
            Ok(Command::SweepBand(sweep)) => {
                assert_eq!(sweep.bands, vec![0.25, 0.2, 0.1, 0.05, 0.01, 0.001])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["eval", "--checkpoint", "c"]),
            Ok(Command::Eval(_))
        ));
        assert!(matches!(
            parse(&["grads", "--out", "g.safetensors"]),
            Ok(Command::Grads(_))
        ));
    }

    #[test]
    fn bad_values_are_rejected_with_clear_messages() {
        let cases: [(&[&str], &str); 13] = [
            (&["--band", "0"], "the band half-width h must be > 0"),
            (&["--band", "-0.1"], "the band half-width h must be > 0"),
            (&["--band", "nan"], "must be a positive finite number"),
            (&["--band", "wide"], "`wide` is not a number"),
            (&["--hidden", "0"], "must be at least 1"),
            (&["--batch-size", "0"], "must be at least 1"),
            (&["--batch-size", "x"], "`x` is not a whole number"),
            (&["--lr", "-1"], "must be a positive finite number"),
            (&["--device", "cuda:x"], "not a GPU ordinal"),
            (&["--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
            (
                &["--method", "fast"],
                "possible values: dense, sparse, both",
            ),
            (
                &["--dataset", "mnist"],
                "possible values: fmnist, nmnist, shd",
            ),
            (
                &["sweep-band", "--bands", "0.1,0"],
                "the band half-width h must be > 0",
            ),
        ];
        for (args, want) in cases {
            let err = parse(args).expect_err(&format!("{args:?} should fail"));
            assert!(err.contains(want), "{args:?}: {err}");
        }
        let err = parse(&["--epochs", "2", "eval", "--checkpoint", "c"]).unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
        assert!(parse(&["grads"]).unwrap_err().contains("--out"));
    }
}
