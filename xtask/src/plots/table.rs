//! A CSV file read whole, with its columns looked up by name: every error names the file, and the
//! column (and line) that is missing or does not parse, so a user can fix the input.
//!
//! Invariant: every row kept has as many fields as the header. A last row with fewer fields (a run
//! killed mid-write) is dropped and counted in [`CsvTable::torn_rows`]; a short row anywhere else
//! is an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A CSV file's header and rows, as text.
pub struct CsvTable {
    path: PathBuf,
    header: Vec<String>,
    /// (line number in the file, fields)
    rows: Vec<(u64, csv::StringRecord)>,
    torn_rows: usize,
}

impl CsvTable {
    /// Reads `path` whole. An empty file, or one with a header only, gives a table of no rows.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(path, &bytes)
    }

    /// Parses `bytes` as the content of `path` (which is used in messages only).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let header: Vec<String> = reader
            .headers()
            .with_context(|| format!("{}: reading the header", path.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.with_context(|| format!("{}: reading a row", path.display()))?;
            let line = record.position().map_or(0, |p| p.line());
            rows.push((line, record));
        }
        let mut torn_rows = 0;
        if let Some((_, last)) = rows.last() {
            if last.len() < header.len() {
                rows.pop();
                torn_rows = 1;
            }
        }
        if let Some((line, record)) = rows.iter().find(|(_, r)| r.len() != header.len()) {
            bail!(
                "{}, line {line}: {} fields where the header has {}",
                path.display(),
                record.len(),
                header.len()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            header,
            rows,
            torn_rows,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How many incomplete last rows were dropped (0 or 1).
    pub fn torn_rows(&self) -> usize {
        self.torn_rows
    }

    /// The index of column `name`, or an error naming the file, the column and the columns found.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column `{name}` (the header has: {})",
                self.path.display(),
                self.header.join(",")
            )
        })
    }

    /// Column `name` as text, one value per row.
    pub fn texts(&self, name: &str) -> Result<Vec<String>> {
        let index = self.column(name)?;
        Ok(self
            .rows
            .iter()
            .map(|(_, record)| record.get(index).unwrap_or_default().to_string())
            .collect())
    }

    /// Column `name` parsed as numbers (`inf` and `NaN` included), one value per row.
    pub fn numbers(&self, name: &str) -> Result<Vec<f64>> {
        let index = self.column(name)?;
        self.rows
            .iter()
            .map(|(line, record)| {
                let text = record.get(index).unwrap_or_default();
                text.parse::<f64>().map_err(|_| {
                    anyhow::anyhow!(
                        "{}, line {line}, column `{name}`: `{text}` is not a number",
                        self.path.display()
                    )
                })
            })
            .collect()
    }

    /// Column `name` parsed as whole numbers >= 0, one value per row.
    pub fn counts(&self, name: &str) -> Result<Vec<u64>> {
        let index = self.column(name)?;
        self.rows
            .iter()
            .map(|(line, record)| {
                let text = record.get(index).unwrap_or_default();
                text.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!(
                        "{}, line {line}, column `{name}`: `{text}` is not a whole number >= 0",
                        self.path.display()
                    )
                })
            })
            .collect()
    }

    /// The line in the file of row `row` (for messages).
    pub fn line_of(&self, row: usize) -> u64 {
        self.rows.get(row).map_or(0, |(line, _)| *line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_found_by_name_and_errors_name_file_and_column() {
        let path = Path::new("runs/x/steps.csv");
        let table = CsvTable::parse(path, b"a,b\n1,2\n3,x\n").unwrap();
        assert_eq!(table.numbers("a").unwrap(), [1.0, 3.0]);
        let missing = table.numbers("c").unwrap_err().to_string();
        assert!(
            missing.contains("runs/x/steps.csv") && missing.contains("`c`"),
            "{missing}"
        );
        let bad = table.numbers("b").unwrap_err().to_string();
        assert!(
            bad.contains("line 3") && bad.contains("`b`") && bad.contains("`x`"),
            "{bad}"
        );
    }

    #[test]
    fn a_torn_last_row_is_dropped_and_a_torn_middle_row_is_an_error() {
        let path = Path::new("t.csv");
        let table = CsvTable::parse(path, b"a,b\n1,2\n3").unwrap();
        assert_eq!((table.len(), table.torn_rows()), (1, 1));
        let error = CsvTable::parse(path, b"a,b\n1\n3,4\n")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn quoted_fields_and_infinities_parse() {
        let table = CsvTable::parse(
            Path::new("q.csv"),
            b"device,band\n\"cuda (H200, f32)\",inf\n",
        )
        .unwrap();
        assert_eq!(table.texts("device").unwrap(), ["cuda (H200, f32)"]);
        assert_eq!(table.numbers("band").unwrap(), [f64::INFINITY]);
    }
}
