//! HTTP(S) downloads into an open file, with a progress bar: the only code in the project that
//! touches the network.
//!
//! Redirects are followed (Mendeley and GitHub answer with 302s to a storage host). Response bodies
//! are taken byte for byte: the client sends no `Accept-Encoding`, so a `.gz` file is never
//! transparently decompressed on the way in. A body shorter than its `Content-Length` is an error.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ureq::ResponseExt;

const MAX_REDIRECTS: u32 = 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A server silent for this long is taken as dead; slow but steady servers are fine.
const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(120);
const COPY_CHUNK: usize = 256 * 1024;
const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
/// For servers that send no Content-Length.
const SPINNER_TEMPLATE: &str = "{msg} {spinner} {bytes} {bytes_per_sec}";

/// A blocking HTTP client set up for dataset downloads.
pub struct Downloader {
    agent: ureq::Agent,
    show_progress: bool,
}

impl Downloader {
    /// `show_progress` draws a progress bar on stderr (indicatif hides it when stderr is no terminal).
    pub fn new(show_progress: bool) -> Self {
        let config = ureq::Agent::config_builder()
            .max_redirects(MAX_REDIRECTS)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(IDLE_READ_TIMEOUT))
            .timeout_recv_response(Some(IDLE_READ_TIMEOUT))
            .user_agent(concat!(
                "s3gd-xtask/",
                env!("CARGO_PKG_VERSION"),
                " (fetch-data)"
            ))
            .build();
        Downloader {
            agent: config.into(),
            show_progress,
        }
    }

    /// Downloads `url` into `dest` (written from its current position) and returns the byte count.
    /// `label` names the file on the progress bar.
    pub fn download(&self, url: &str, dest: &mut File, label: &str) -> Result<u64> {
        let response = self.agent.get(url).call().map_err(describe_request_error)?;
        // Named in errors when a redirect led elsewhere, since that host is the one that failed.
        let final_url = response.get_uri().to_string();
        let via = if final_url == url {
            String::new()
        } else {
            format!(" (redirected to {final_url})")
        };
        let announced_len = response.body().content_length();
        let progress = self.progress_bar(label, announced_len);
        let mut body = response.into_body().into_reader();

        let mut buffer = vec![0u8; COPY_CHUNK];
        let mut received = 0u64;
        loop {
            let n = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    progress.abandon();
                    return Err(e).with_context(|| {
                        format!(
                            "connection broke after {received} of {} bytes{via}",
                            describe_len(announced_len)
                        )
                    });
                }
            };
            dest.write_all(&buffer[..n])
                .context("writing the download to its temporary file")?;
            received += n as u64;
            progress.inc(n as u64);
        }
        progress.finish_and_clear();
        // ureq already rejects most short bodies; this also covers a close-delimited one that a
        // proxy cut short while announcing the full length.
        if let Some(len) = announced_len {
            if received != len {
                bail!("body has {received} bytes but Content-Length said {len}{via}");
            }
        }
        dest.flush()
            .context("flushing the download to its temporary file")?;
        Ok(received)
    }

    fn progress_bar(&self, label: &str, len: Option<u64>) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let (bar, template) = match len {
            Some(len) => (ProgressBar::new(len), BAR_TEMPLATE),
            None => (ProgressBar::no_length(), SPINNER_TEMPLATE),
        };
        // The templates are constants checked by a test; a bad one would only lose the styling.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        bar
    }
}

fn describe_len(len: Option<u64>) -> String {
    len.map_or_else(|| "an unknown number of".to_owned(), |l| l.to_string())
}

/// Turns ureq's error into the words a user needs: a status code, or the network problem.
fn describe_request_error(error: ureq::Error) -> anyhow::Error {
    match error {
        ureq::Error::StatusCode(code) => anyhow::anyhow!("server answered HTTP {code}"),
        ureq::Error::TooManyRedirects => {
            anyhow::anyhow!("more than {MAX_REDIRECTS} redirects")
        }
        other => anyhow::Error::new(other).context("request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_templates_parse() {
        for template in [BAR_TEMPLATE, SPINNER_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
