//! `cargo xtask`: the command line of the project tasks (`fetch-data`, `sample`, `plots`,
//! `kernel-ptx`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use xtask::catalog::{self, DEBIAN_FASHION_MNIST_DIR};
use xtask::fetch::{fetch_dataset, FetchOptions, Outcome};
use xtask::plots::{plot, PlotOptions};
use xtask::sample::{make_sample, SampleOptions, FASHION_MNIST_FILE_NAMES};
use xtask::workspace_root;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "s3gd project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download (or copy from a local folder) and verify the datasets.
    FetchData {
        /// Which dataset to fetch.
        #[arg(long, value_enum, default_value_t = DatasetChoice::Fmnist)]
        dataset: DatasetChoice,
        /// Datasets folder [default: <workspace>/datasets].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A folder of files downloaded by hand, tried before any download.
        #[arg(long)]
        from: Option<PathBuf>,
        /// A base URL serving the files under their usual names, tried before the built-in URLs.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Write the small class-balanced Fashion-MNIST sample that is committed to the repository.
    Sample {
        /// Folder with the full Fashion-MNIST [default: <workspace>/datasets/fashion-mnist when
        /// complete, else /usr/share/datasets/fashion-mnist].
        #[arg(long)]
        from: Option<PathBuf>,
        /// Output folder [default: <workspace>/datasets/sample/fashion-mnist].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Training images kept per class (the first ones in file order).
        #[arg(long, default_value_t = 600)]
        train_per_class: usize,
        /// Test images kept per class (the first ones in file order).
        #[arg(long, default_value_t = 100)]
        test_per_class: usize,
        /// Skip checking the input against the official Fashion-MNIST checksums.
        #[arg(long)]
        no_verify: bool,
    },
    /// Draw the paper's figures (PNG and SVG) from training runs, band sweeps, a gradients file
    /// and the benchmark's CSV; each figure only when its inputs are given.
    Plots {
        /// Output directories of `s3gd-train` (training runs: Fig. 1A, 1C, 1D, 2A, 2B) and of
        /// `s3gd-train sweep-band` (holding sweep.csv: Fig. 3).
        #[arg(long, num_args = 1.., value_name = "DIR")]
        runs: Vec<PathBuf>,
        /// Folder for the figures (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A file written by `s3gd-train grads` (Fig. 1B).
        #[arg(long, value_name = "FILE.safetensors")]
        grads: Option<PathBuf>,
        /// The benchmark's CSV of dense/sparse layer-2 timings per hidden size (Fig. 2C).
        #[arg(long, value_name = "FILE")]
        bench_csv: Option<PathBuf>,
    },
    /// Compile the CUDA kernels with NVRTC (no GPU needed, but NVRTC must load) and list each
    /// kernel's PTX size; with --against, which kernels' code changed since an earlier --out file
    /// (NVRTC compiles all kernel files as one program: an edit to one file can change another's
    /// code, which then needs timing again).
    KernelPtx {
        /// Architecture to compile for.
        #[arg(long, value_enum, default_value_t = Arch::Compute90)]
        arch: Arch,
        /// Write the whole PTX here (to compare a later edit against).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// An earlier PTX file written by --out.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// Also assemble the PTX with this ptxas (`ptxas -v` for the architecture; e.g. from the
        /// pip wheel nvidia-cuda-nvcc) and list each kernel's registers and spills: what limits
        /// its occupancy, without a GPU.
        #[arg(long, value_name = "PTXAS")]
        ptxas: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    #[value(name = "compute_80")]
    Compute80,
    #[value(name = "compute_86")]
    Compute86,
    #[value(name = "compute_89")]
    Compute89,
    #[value(name = "compute_90")]
    Compute90,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Compute80 => "compute_80",
            Arch::Compute86 => "compute_86",
            Arch::Compute89 => "compute_89",
            Arch::Compute90 => "compute_90",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DatasetChoice {
    Fmnist,
    Nmnist,
    Shd,
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchData {
            dataset,
            dir,
            from,
            mirror,
        } => fetch_data(dataset, dir, from, mirror),
        Command::Sample {
            from,
            out,
            train_per_class,
            test_per_class,
            no_verify,
        } => sample(from, out, train_per_class, test_per_class, no_verify),
        Command::Plots {
            runs,
            out,
            grads,
            bench_csv,
        } => plots(PlotOptions {
            runs,
            out,
            grads,
            bench_csv,
        }),
        Command::KernelPtx {
            arch,
            out,
            against,
            ptxas,
        } => kernel_ptx(arch.name(), out, against, ptxas),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn fetch_data(
    dataset: DatasetChoice,
    dir: Option<PathBuf>,
    from: Option<PathBuf>,
    mirror: Option<String>,
) -> Result<()> {
    let keys: Vec<&str> = match dataset {
        DatasetChoice::Fmnist => vec!["fmnist"],
        DatasetChoice::Nmnist => vec!["nmnist"],
        DatasetChoice::Shd => vec!["shd"],
        DatasetChoice::All => catalog::DATASET_KEYS.to_vec(),
    };
    let opts = FetchOptions {
        dir: dir.unwrap_or_else(|| workspace_root().join("datasets")),
        from,
        mirror,
        show_progress: true,
    };
    // With `all`, a dataset that fails does not stop the others; the failures are listed at the end.
    let mut failed = Vec::new();
    for key in keys {
        let Some(spec) = catalog::dataset(key) else {
            bail!("unknown dataset {key}");
        };
        println!(
            "{} -> {}",
            spec.title,
            opts.dir.join(&spec.subdir).display()
        );
        match fetch_dataset(&spec, &opts) {
            Ok(reports) => {
                for report in reports {
                    print_report(&report);
                }
            }
            Err(error) => failed.push(format!("{}: {error:#}", spec.title)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("\n"))
    }
}

fn print_report(report: &xtask::fetch::FileReport) {
    let name = report.path.display();
    for failure in &report.failed_sources {
        println!("  {name}: skipped {} ({})", failure.source, failure.reason);
    }
    match &report.outcome {
        Outcome::AlreadyVerified => println!("  {name}: already present and verified"),
        Outcome::AlreadyConverted => println!("  {name}: already converted"),
        Outcome::Fetched { source } => println!("  {name}: verified, from {source}"),
    }
    if let Some((output, samples)) = &report.converted {
        println!("  {}: converted, {samples} samples", output.display());
    }
}

fn sample(
    from: Option<PathBuf>,
    out: Option<PathBuf>,
    train_per_class: usize,
    test_per_class: usize,
    no_verify: bool,
) -> Result<()> {
    let root = workspace_root();
    let from = match from {
        Some(from) => from,
        None => default_full_fashion_mnist(&root)?,
    };
    if !no_verify {
        for (name, check) in catalog::fashion_mnist_checks() {
            let path = from.join(&name);
            if !path.is_file() {
                bail!(
                    "{} not found: the full Fashion-MNIST is needed (`cargo xtask fetch-data`)",
                    path.display()
                );
            }
            check.verify(&path).with_context(|| {
                format!(
                    "{} is not the official Fashion-MNIST file (pass --no-verify to sample other data)",
                    path.display()
                )
            })?;
        }
    }
    let opts = SampleOptions {
        from,
        out: out.unwrap_or_else(|| root.join("datasets/sample/fashion-mnist")),
        train_per_class,
        test_per_class,
    };
    let report = make_sample(&opts)?;
    println!(
        "sample of {}: {} training and {} test images, {} classes, in {}",
        opts.from.display(),
        report.train_images,
        report.test_images,
        report.classes,
        opts.out.display()
    );
    for file in &report.files {
        let name = file.path.file_name().map(|n| n.to_string_lossy());
        println!(
            "{}  {} ({} bytes)",
            file.sha256,
            name.unwrap_or_default(),
            file.bytes
        );
    }
    Ok(())
}

fn plots(opts: PlotOptions) -> Result<()> {
    let report = plot(&opts)?;
    for note in &report.notes {
        println!("note: {note}");
    }
    for (name, files) in &report.rendered {
        println!(
            "{name}: {} and {}",
            files.png.display(),
            files.svg.display()
        );
    }
    for (name, reason) in &report.skipped {
        println!("{name}: skipped ({reason})");
    }
    Ok(())
}

/// The fetched copy when it is complete, else Debian's.
fn default_full_fashion_mnist(root: &Path) -> Result<PathBuf> {
    let candidates = [
        root.join("datasets/fashion-mnist"),
        PathBuf::from(DEBIAN_FASHION_MNIST_DIR),
    ];
    for dir in &candidates {
        if FASHION_MNIST_FILE_NAMES
            .iter()
            .all(|name| dir.join(name).is_file())
        {
            return Ok(dir.clone());
        }
    }
    bail!(
        "no full Fashion-MNIST found in {} or {}: run `cargo xtask fetch-data` or pass --from DIR",
        candidates[0].display(),
        candidates[1].display()
    )
}

fn kernel_ptx(
    arch: &'static str,
    out: Option<PathBuf>,
    against: Option<PathBuf>,
    ptxas: Option<PathBuf>,
) -> Result<()> {
    // Read before anything is written, so that --out and --against may name the same file.
    let before = against
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the earlier PTX {}", path.display()))
        })
        .transpose()?;
    if before
        .as_deref()
        .is_some_and(|b| xtask::ptx::kernels(b).is_empty())
    {
        bail!(
            "{} holds no kernel (.entry): not a PTX file written by --out",
            against.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    if let Some(path) = ptxas.as_deref().filter(|p| !p.is_file()) {
        bail!(
            "--ptxas {}: no such program (ptxas comes with the CUDA toolkit or the pip wheel \
             nvidia-cuda-nvcc, in nvidia/cu13/bin)",
            path.display()
        );
    }
    let ptx = s3gd_kernels::compile_ptx(arch).context("compiling the kernels with NVRTC")?;
    if let Some(path) = &out {
        let tmp = path.with_extension("ptx.partial");
        std::fs::write(&tmp, &ptx)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} kernels, {} lines of PTX for {arch}{}",
        xtask::ptx::kernels(&ptx).len(),
        ptx.lines().count(),
        out.as_ref()
            .map(|p| format!(", written to {}", p.display()))
            .unwrap_or_default()
    );
    let resources = ptxas
        .as_deref()
        .map(|ptxas| assemble(ptxas, arch, &ptx))
        .transpose()?;
    print!(
        "{}",
        xtask::ptx::report(&ptx, before.as_deref(), resources.as_ref())
    );
    Ok(())
}

/// Each kernel's registers and spills from `ptxas -v` for `arch` (compute_XX -> sm_XX) over
/// `ptx`, written to a temporary file; the cubin is discarded.
fn assemble(
    ptxas: &Path,
    arch: &str,
    ptx: &str,
) -> Result<std::collections::BTreeMap<String, xtask::ptx::Resources>> {
    let dir = std::env::temp_dir().join(format!("s3gd-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = dir.join("kernels.ptx");
    let result = (|| {
        std::fs::write(&source, ptx).with_context(|| format!("writing {}", source.display()))?;
        let sm = arch.replace("compute_", "sm_");
        let output = std::process::Command::new(ptxas)
            .arg(format!("-arch={sm}"))
            .arg("-v")
            .arg(&source)
            .arg("-o")
            .arg(dir.join("kernels.cubin"))
            .output()
            .with_context(|| format!("running {}", ptxas.display()))?;
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!(
                "{} failed on the kernels' PTX ({}): {}",
                ptxas.display(),
                output.status,
                log.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
            );
        }
        let resources = xtask::ptx::ptxas_resources(&log);
        if resources.is_empty() {
            bail!(
                "{} printed no kernel's resources: is it ptxas?",
                ptxas.display()
            );
        }
        Ok(resources)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
