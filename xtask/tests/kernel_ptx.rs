//! `cargo xtask kernel-ptx` from the command line: a bad `--against` file or a missing `--ptxas` is
//! a clear error before anything is compiled; where NVRTC loads, the kernels' PTX is written,
//! listed and compared with itself (every kernel "same"), and a program that is not ptxas is named
//! in the error; where NVRTC does not load, the error names NVRTC.

use std::fs;
use std::process::{Command, Output};

/// `cargo xtask kernel-ptx FLAG VALUE`, run to the end.
fn kernel_ptx(flag: &str, value: impl AsRef<std::ffi::OsStr>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["kernel-ptx", flag])
        .arg(value)
        .output()
        .unwrap()
}

/// The error output of a run that must have failed.
fn stderr_of_failure(output: &Output) -> String {
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_file_without_kernels_is_refused_before_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.txt");
    fs::write(&bad, "not PTX\n").unwrap();
    let output = kernel_ptx("--against", &bad);
    let stderr = stderr_of_failure(&output);
    assert!(
        stderr.contains("notes.txt") && stderr.contains("holds no kernel"),
        "{stderr}"
    );

    let missing = dir.path().join("missing.ptx");
    let output = kernel_ptx("--against", &missing);
    let stderr = stderr_of_failure(&output);
    assert!(stderr.contains("missing.ptx"), "{stderr}");
}

#[test]
fn the_kernels_compare_equal_to_themselves_or_nvrtc_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("kernels.ptx");
    let output = kernel_ptx("--out", &written);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // No NVRTC on this machine (CI): the one clear error, and no file left behind.
        assert!(stderr.contains("NVRTC"), "{stderr}");
        assert!(!written.exists());
        println!("SKIPPED the comparison: NVRTC is not loadable here ({stderr})");
        return;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| tiled_input_grad_f32 |"), "{stdout}");
    assert!(fs::read_to_string(&written).unwrap().contains(".entry"));

    let output = kernel_ptx("--against", &written);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    // The header and then one row per kernel, each "same".
    assert!(rows.len() > 10, "{stdout}");
    assert!(
        rows[1..].iter().all(|row| row.ends_with("| same |")),
        "{stdout}"
    );
}

#[test]
fn a_missing_or_wrong_ptxas_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-ptxas");
    let output = kernel_ptx("--ptxas", &missing);
    let stderr = stderr_of_failure(&output);
    assert!(
        stderr.contains("no-ptxas") && stderr.contains("no such program"),
        "{stderr}"
    );

    // Programs that are not ptxas: one that fails, one that succeeds and prints nothing.
    for (program, says) in [
        ("/bin/false", "failed on the kernels' PTX"),
        ("/bin/true", "printed no kernel's resources"),
    ] {
        if !std::path::Path::new(program).is_file() {
            println!("SKIPPED {program}: not on this machine");
            continue;
        }
        let output = kernel_ptx("--ptxas", program);
        let stderr = stderr_of_failure(&output);
        if stderr.contains("NVRTC") {
            println!("SKIPPED {program}: NVRTC is not loadable here ({stderr})");
            continue;
        }
        assert!(
            stderr.contains(program) && stderr.contains(says),
            "{stderr}"
        );
    }
}
