//! s3gd-train: the paper's experiments end to end. The binary (`main.rs`) parses the command line;
//! this library runs the subcommands, so that tests can call into it.
//!
//! - [`cli`]: the clap command line and its value parsers.
//! - [`settings`]: the resolved settings of a run, with the paper's per-dataset defaults.
//! - [`device`]: `--device` and the backends this build can open; [`with_backend!`] dispatches.
//! - [`train`]: the training loop, generic over `B: s3gd_core::Backend`, with resume.
//! - [`record`], [`checkpoint`], [`tensors`]: the files a run writes (CSV, JSON, safetensors).
//! - [`grads`], [`sweep`]: the `grads` and `sweep-band` subcommands; [`summary`]: the final table.
//!
//! Output goes to stdout only for results (summary tables, eval's accuracy); logs and progress go to
//! stderr.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod grads;
pub mod progress;
pub mod record;
pub mod settings;
pub mod summary;
pub mod sweep;
pub mod tensors;
pub mod train;

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{bail, Result};

use crate::cli::{Command, EvalArgs, GradsArgs, SweepArgs, TrainArgs};
use crate::summary::MethodSummary;
use crate::train::{MethodRun, RunPlan};

/// Writes results to stdout; a closed stdout (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Runs one parsed command.
pub fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Train(args) => train_command(&args).map(|_| ()),
        Command::Eval(args) => eval_command(&args).map(|_| ()),
        Command::Grads(args) => grads_command(&args),
        Command::SweepBand(args) => sweep_command(&args).map(|_| ()),
    }
}

/// `train`: resolves the settings (or the resumed run's), trains, prints the summary.
pub fn train_command(args: &TrainArgs) -> Result<Vec<MethodRun>> {
    let (settings, out, resume) = match &args.resume {
        Some(dir) => {
            if args.run.out.as_ref().is_some_and(|out| out != dir) {
                bail!("--resume continues the run in its own directory; drop --out");
            }
            let saved = settings::read_saved(dir)?;
            (settings::for_resume(&saved, args)?, dir.clone(), true)
        }
        None => {
            let settings = settings::for_train(args);
            let out = args
                .run
                .out
                .clone()
                .unwrap_or_else(|| train::default_out(&settings));
            train::check_fresh_out(&out)?;
            (settings, out, false)
        }
    };
    let env = &args.run.env;
    let device = device::open(env)?;
    tracing::info!("device: {}", device.describe());
    let data = data::load(
        settings.dataset,
        &settings.data_location(),
        settings.train_limit,
        settings.test_limit,
    )?;
    let plan = RunPlan {
        settings,
        out,
        resume,
        device: device.describe(),
    };
    let runs = with_backend!(&device, |backend| train::run(backend, &plan, &data))?;
    let rows: Vec<MethodSummary> = runs.iter().map(MethodSummary::of).collect();
    let s = &plan.settings;
    let band = if s.methods().iter().any(|m| m.name() == "sparse") {
        format!(" (h = {})", s.band)
    } else {
        String::new()
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nsummary: {}, method {}{band}, {} hidden, {} epochs, batch {}, lr {}, readout {}, seed {}",
        s.dataset,
        s.method.name(),
        s.hidden,
        s.epochs,
        s.batch_size,
        s.learning_rate,
        s.readout,
        s.seed
    );
    let _ = writeln!(text, "device: {}", plan.device);
    let _ = writeln!(text, "data: {}", data.describe());
    let _ = writeln!(text, "output: {}", plan.out.display());
    let _ = write!(text, "{}", summary::table(&rows));
    emit(&text);
    Ok(runs)
}

/// `eval`: test accuracy and loss of a checkpoint; returns (accuracy, loss).
pub fn eval_command(args: &EvalArgs) -> Result<(f64, f64)> {
    let saved = checkpoint::load(&args.checkpoint)?;
    let s = &saved.settings;
    if let Some(dataset) = args.dataset {
        let dataset = s3gd_core::DatasetKind::from(dataset);
        if dataset != s.dataset {
            bail!(
                "--dataset {dataset}, but {} holds a {} network",
                args.checkpoint.display(),
                s.dataset
            );
        }
    }
    let device = device::open(&args.env)?;
    let data_dir = match &args.env.data_dir {
        Some(dir) => dir.clone(),
        None => s.data_location(),
    };
    let data = data::load(s.dataset, &data_dir, None, args.test_limit)?;
    let network = s.network();
    data.check_fits(&network)?;
    let batch_size = args.batch_size.unwrap_or(s.batch_size);
    let (accuracy, loss) = with_backend!(&device, |backend| {
        let trainer = s3gd_core::Trainer::from_state(backend, network, saved.method, &saved.state)?;
        train::evaluate(backend, &trainer, &data.test, batch_size)
    })?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{}: {} network trained {} epoch(s) ({} steps) with {}",
        args.checkpoint.display(),
        s.dataset,
        saved.epoch,
        saved.state.step,
        saved.method.name()
    );
    let _ = writeln!(text, "device: {}", device.describe());
    let _ = writeln!(
        text,
        "data: {} test samples; {}",
        data.test.len(),
        data.source
    );
    let _ = writeln!(
        text,
        "test accuracy: {:.2}% (loss {loss:.4})",
        100.0 * accuracy
    );
    emit(&text);
    Ok((accuracy, loss))
}

/// `grads`: writes the dense and sparse gradients of one batch.
pub fn grads_command(args: &GradsArgs) -> Result<()> {
    let plan = grads::plan(args)?;
    let device = device::open(&args.env)?;
    tracing::info!("device: {}", device.describe());
    let data = data::load(plan.dataset, &plan.data_dir, None, None)?;
    with_backend!(&device, |backend| grads::write(backend, &plan, &data))
}

/// `sweep-band`: the band sweep; prints its table.
pub fn sweep_command(args: &SweepArgs) -> Result<Vec<(s3gd_core::Method, MethodSummary)>> {
    let base = settings::from_run_args(
        &args.run,
        cli::MethodChoice::Sparse,
        s3gd_core::DEFAULT_BAND,
    );
    let out = args
        .run
        .out
        .clone()
        .unwrap_or_else(|| sweep::default_out(&base));
    let device = device::open(&args.run.env)?;
    tracing::info!("device: {}", device.describe());
    let data = data::load(
        base.dataset,
        &base.data_location(),
        base.train_limit,
        base.test_limit,
    )?;
    let description = device.describe();
    let done = with_backend!(&device, |backend| sweep::run(
        backend,
        &base,
        &args.bands,
        &out,
        &description,
        &data
    ))?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nband sweep: {}, {} hidden, {} epochs, batch {}, seed {}",
        base.dataset, base.hidden, base.epochs, base.batch_size, base.seed
    );
    let _ = writeln!(text, "device: {description}");
    let _ = writeln!(text, "data: {}", data.describe());
    let _ = writeln!(text, "output: {} ({})", out.display(), sweep::SWEEP_FILE);
    let _ = write!(text, "{}", sweep::table(&done));
    emit(&text);
    Ok(done)
}
