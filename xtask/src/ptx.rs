//! The CUDA kernels' PTX, kernel by kernel (`cargo xtask kernel-ptx`): sizes, which kernels' code
//! changed against an earlier PTX file, and (with ptxas) each kernel's registers and spills.
//!
//! NVRTC compiles all the kernel files as one program, and NVVM's code for one kernel can change
//! when another file changes (docs/gpu.md, fifth session: the tiled dS_in kernel went from 2639 to
//! 3489 PTX lines after an edit to the LIF scan alone, and measured slower). Comparing the PTX of
//! every kernel before and after an edit shows which kernels a GPU run has to time again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One kernel's PTX: its name and everything from its `.entry` line to its closing brace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPtx {
    pub name: String,
    pub body: String,
}

/// The kernels (`.entry` functions) of a PTX module, in file order. A kernel's body ends where
/// the braces opened after its `.entry` line close again: an inline asm block's braces may stand
/// in the first column, so a lone `}` there need not be the kernel's.
pub fn kernels(ptx: &str) -> Vec<KernelPtx> {
    let mut found = Vec::new();
    let mut current: Option<(KernelPtx, i64)> = None;
    for line in ptx.lines() {
        if let Some((kernel, depth)) = current.as_mut() {
            kernel.body.push_str(line);
            kernel.body.push('\n');
            let code = line.split("//").next().unwrap_or("");
            let opened = code.matches('{').count() as i64 - code.matches('}').count() as i64;
            let was_open = *depth > 0;
            *depth += opened;
            if was_open && *depth <= 0 {
                found.extend(current.take().map(|(kernel, _)| kernel));
            }
        } else if let Some(name) = entry_name(line) {
            current = Some((
                KernelPtx {
                    name,
                    body: format!("{line}\n"),
                },
                0,
            ));
        }
    }
    found
}

fn entry_name(line: &str) -> Option<String> {
    let rest = &line[line.find(".entry")? + ".entry".len()..];
    let name: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The body with register numbers and basic-block labels dropped (`%r123` -> `%r`,
/// `$L__BB31_7` -> `$L`), so that two compiles of the same code compare equal although NVVM
/// numbered them differently.
pub fn normalized(body: &str) -> String {
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len());
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k];
        if c == '%' {
            out.push(c);
            k += 1;
            while k < chars.len() && chars[k].is_ascii_alphabetic() {
                out.push(chars[k]);
                k += 1;
            }
            while k < chars.len() && chars[k].is_ascii_digit() {
                k += 1;
            }
        } else if chars[k..].starts_with(&['$', 'L', '_', '_', 'B', 'B']) {
            out.push_str("$L");
            k += 6;
            while k < chars.len() && (chars[k].is_ascii_digit() || chars[k] == '_') {
                k += 1;
            }
        } else {
            out.push(c);
            k += 1;
        }
    }
    out
}

/// Counts that say how big a kernel's code is and what it does most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelSize {
    /// Lines of PTX, the `.entry` line and the closing brace included.
    pub lines: usize,
    /// Branch instructions (`bra`).
    pub branches: usize,
    /// Loads from global memory (`ld.global`).
    pub global_loads: usize,
    /// Loads from shared memory (`ld.shared`).
    pub shared_loads: usize,
    /// Calls to non-inlined functions (`call`).
    pub calls: usize,
}

/// The size of a kernel's PTX.
pub fn size(kernel: &KernelPtx) -> KernelSize {
    let mut size = KernelSize::default();
    for line in kernel.body.lines() {
        size.lines += 1;
        let line = line.trim_start();
        // A guard (`@%p1 bra`, `@!%p1 bra`) comes before the opcode: skip it.
        let op = if line.starts_with('@') {
            line.split_once(char::is_whitespace)
                .map_or("", |(_, rest)| rest.trim_start())
        } else {
            line
        };
        if op.starts_with("bra") {
            size.branches += 1;
        } else if op.starts_with("ld.global") {
            size.global_loads += 1;
        } else if op.starts_with("ld.shared") {
            size.shared_loads += 1;
        } else if op.starts_with("call") {
            size.calls += 1;
        }
    }
    size
}

/// How a kernel's code compares with an earlier PTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The same code but for register numbers and labels.
    Same,
    /// Different code; the earlier file's size of it.
    Changed { before: KernelSize },
    /// Not in the earlier file.
    Added,
    /// Only in the earlier file.
    Removed { before: KernelSize },
}

/// Every kernel of `after` (in its order, then those only in `before`) with how it compares.
pub fn compare(before: &str, after: &str) -> Vec<(String, Change)> {
    let earlier: BTreeMap<String, KernelPtx> = kernels(before)
        .into_iter()
        .map(|k| (k.name.clone(), k))
        .collect();
    let mut seen = Vec::new();
    let mut result = Vec::new();
    for kernel in kernels(after) {
        let change = match earlier.get(&kernel.name) {
            None => Change::Added,
            Some(old) if normalized(&old.body) == normalized(&kernel.body) => Change::Same,
            Some(old) => Change::Changed { before: size(old) },
        };
        seen.push(kernel.name.clone());
        result.push((kernel.name, change));
    }
    for (name, old) in &earlier {
        if !seen.contains(name) {
            result.push((name.clone(), Change::Removed { before: size(old) }));
        }
    }
    result
}

/// What ptxas reports for one kernel (`ptxas -v`): registers a thread, stack frame and spills,
/// in bytes a thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// Each entry function's resources from the log of `ptxas -v` (its `info` lines on stderr):
/// "Compiling entry function 'NAME' for 'sm_XX'" starts a kernel, then its "N bytes stack
/// frame, N bytes spill stores, N bytes spill loads" and "Used N registers" lines follow. Lines of
/// non-entry functions and anything unrecognised are skipped.
pub fn ptxas_resources(log: &str) -> BTreeMap<String, Resources> {
    let mut found = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
            continue;
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        let entry: &mut Resources = found.entry(name.clone()).or_default();
        if line.contains("bytes stack frame") {
            for part in line.split(',') {
                let number = part
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok());
                if let Some(n) = number {
                    if part.contains("stack frame") {
                        entry.stack_bytes = n;
                    } else if part.contains("spill stores") {
                        entry.spill_store_bytes = n;
                    } else if part.contains("spill loads") {
                        entry.spill_load_bytes = n;
                    }
                }
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            if let Some(n) = rest
                .split(" registers")
                .next()
                .and_then(|n| n.trim().parse::<u32>().ok())
            {
                entry.registers = n;
            }
        }
    }
    found
}

/// A markdown table of every kernel's size, with a column comparing it to `before` when given,
/// and its registers and spills (stored / loaded bytes a thread) when `resources` are given.
pub fn report(
    ptx: &str,
    before: Option<&str>,
    resources: Option<&BTreeMap<String, Resources>>,
) -> String {
    let changes: BTreeMap<String, Change> = before
        .map(|b| compare(b, ptx).into_iter().collect())
        .unwrap_or_default();
    let mut out = String::new();
    let with_changes = before.is_some();
    out.push_str("| kernel | PTX lines | branches | global loads | shared loads | calls |");
    if resources.is_some() {
        out.push_str(" registers | spill bytes |");
    }
    out.push_str(if with_changes {
        " against the earlier file |\n"
    } else {
        "\n"
    });
    out.push_str("|---|---|---|---|---|---|");
    if resources.is_some() {
        out.push_str("---|---|");
    }
    out.push_str(if with_changes { "---|\n" } else { "\n" });
    let mut row = |name: &str, s: KernelSize, note: Option<String>| {
        let _ = write!(
            out,
            "| {name} | {} | {} | {} | {} | {} |",
            s.lines, s.branches, s.global_loads, s.shared_loads, s.calls
        );
        if let Some(resources) = resources {
            match resources.get(name) {
                Some(r) => {
                    let _ = write!(
                        out,
                        " {} | {} / {} |",
                        r.registers, r.spill_store_bytes, r.spill_load_bytes
                    );
                }
                None => out.push_str(" - | - |"),
            }
        }
        match note {
            Some(note) => {
                let _ = writeln!(out, " {note} |");
            }
            None => out.push('\n'),
        }
    };
    for kernel in kernels(ptx) {
        let note = with_changes.then(|| match changes.get(&kernel.name) {
            Some(Change::Same) => "same".to_string(),
            Some(Change::Changed { before }) => format!("CHANGED (was {} lines)", before.lines),
            _ => "new".to_string(),
        });
        row(&kernel.name, size(&kernel), note);
    }
    for (name, change) in &changes {
        if let Change::Removed { before } = change {
            row(name, *before, Some("removed".to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = "\
.version 9.0
.target sm_90
.func  (.param .b64 func_retval0) __internal_accurate_pow(
)
{
\tret;
}
.visible .entry first_f32(
\t.param .u64 first_f32_param_0
)
{
\t.reg .pred \t%p<3>;
\tld.global.f32 \t%f1, [%rd1];
\t@%p1 bra \t$L__BB0_2;
\tld.shared.f32 \t%f2, [%rd2];
$L__BB0_2:
\t{
\t.reg .b32 %temp;
\t}
\t// begin inline asm
{
.reg .pred p;
}
\t// end inline asm
\tret;
}
.visible .entry second(
)
{
\tcall.uni (retval0), __internal_accurate_pow, (param0);
\tbra.uni \t$L__BB1_1;
}
";

    #[test]
    fn kernels_are_split_at_their_closing_brace() {
        let found = kernels(PTX);
        let names: Vec<&str> = found.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["first_f32", "second"]);
        assert!(found[0].body.starts_with(".visible .entry first_f32("));
        assert!(found[0].body.ends_with("\tret;\n}\n"));
        assert!(!found[0].body.contains("second"));
    }

    #[test]
    fn sizes_count_guarded_and_plain_instructions() {
        let found = kernels(PTX);
        assert_eq!(
            size(&found[0]),
            KernelSize {
                lines: 19,
                branches: 1,
                global_loads: 1,
                shared_loads: 1,
                calls: 0,
            }
        );
        let second = size(&found[1]);
        assert_eq!((second.branches, second.calls), (1, 1));
    }

    #[test]
    fn renumbered_registers_and_labels_compare_equal() {
        let renumbered = PTX
            .replace("%f1", "%f17")
            .replace("%rd2", "%rd40")
            .replace("$L__BB0_2", "$L__BB7_9");
        assert_eq!(
            compare(PTX, &renumbered),
            vec![
                ("first_f32".to_string(), Change::Same),
                ("second".to_string(), Change::Same)
            ]
        );
    }

    #[test]
    fn changed_added_and_removed_kernels_are_named() {
        let after = PTX
            .replace("ld.shared.f32", "ld.global.f32")
            .replace(".entry second(", ".entry third(");
        let changes = compare(PTX, &after);
        assert_eq!(changes.len(), 3);
        assert!(
            matches!(changes[0], (ref n, Change::Changed { before }) if n == "first_f32" && before.shared_loads == 1)
        );
        assert_eq!(changes[1], ("third".to_string(), Change::Added));
        assert!(matches!(changes[2], (ref n, Change::Removed { .. }) if n == "second"));
        let table = report(&after, Some(PTX), None);
        assert!(table.contains("| first_f32 | 19 | 1 | 2 | 0 | 0 | CHANGED (was 19 lines) |"));
        assert!(table.contains("| third |"));
        assert!(table.contains("| second | 6 | 1 | 0 | 0 | 1 | removed |"));
    }

    /// The `ptxas -v` lines of two kernels and a device function, as ptxas 13.0 prints them.
    const PTXAS_LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for __internal_accurate_pow
    24 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'first_f32' for 'sm_90'
ptxas info    : Function properties for first_f32
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 16512 bytes smem
ptxas info    : Compile time = 18.881 ms
ptxas info    : Compiling entry function 'second' for 'sm_90'
ptxas info    : Function properties for second
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers, used 0 barriers
";

    #[test]
    fn ptxas_log_gives_each_kernels_registers_and_spills() {
        let found = ptxas_resources(PTXAS_LOG);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            found["first_f32"],
            Resources {
                registers: 168,
                stack_bytes: 16,
                spill_store_bytes: 8,
                spill_load_bytes: 12
            }
        );
        assert_eq!(found["second"].registers, 18);
        assert_eq!(found["second"].spill_store_bytes, 0);
        assert!(ptxas_resources("ptxas fatal : Unresolved extern function 'x'\n").is_empty());
    }

    #[test]
    fn report_lists_registers_and_spills_where_ptxas_ran() {
        let resources = ptxas_resources(PTXAS_LOG);
        let table = report(PTX, None, Some(&resources));
        assert!(table.contains("| kernel | PTX lines | branches | global loads | shared loads | calls | registers | spill bytes |"));
        assert!(
            table.contains("| first_f32 | 19 | 1 | 1 | 1 | 0 | 168 | 8 / 12 |"),
            "{table}"
        );
        assert!(
            table.contains("| second | 6 | 1 | 0 | 0 | 1 | 18 | 0 / 0 |"),
            "{table}"
        );
        let without = report(PTX, None, None);
        assert!(!without.contains("registers"));
    }
}
