//! The kernels compile with NVRTC (needs only libnvrtc, no GPU); skips with a notice without it.

#[test]
fn kernels_compile_with_nvrtc() {
    if !s3gd_kernels::probe().nvrtc {
        println!("SKIPPED: NVRTC (libnvrtc.so) not found");
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = s3gd_kernels::compile_ptx(arch).unwrap_or_else(|e| panic!("{e}"));
        for kernel in [
            "lif_scan_f32",
            "spike_current_bits_f64",
            "s3gd_bwd_input_f32",
            "adam_f32",
        ] {
            assert!(
                ptx.contains(kernel),
                "{arch}: {kernel} missing from the PTX"
            );
        }
    }
}

#[test]
fn probing_never_panics() {
    let found = s3gd_kernels::probe();
    println!("{found:?}");
    if !found.driver {
        let err = s3gd_kernels::CudaBackend::new(0).err().unwrap();
        assert!(matches!(err, s3gd_kernels::CudaError::NoDriver), "{err}");
    }
}
