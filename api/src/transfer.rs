//! `ticketd verify`, `ticketd export` and `ticketd import` (docs/AUDIT.md).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context};
use uuid::Uuid;

use ticketd_commands::import::{Imported, Importer};
use ticketd_commands::verify::{verify_store_with, Report, Verifier};
use ticketd_commands::{EventBatch, EventRef, EventStore, Position, StoredEvent};
use ticketd_domain::HASH_LEN;

use crate::app::OpenedStore;
use crate::config::{ExportArgs, Format, ImportArgs, VerifyArgs};
use crate::ndjson::LineWriter;
use crate::record::AuditEvent;

/// Events per read (export) and per insert (import).
const BATCH: usize = 1000;
/// Events per store read in an export.
const EXPORT_PAGE: usize = 5000;

/// A report as `ticketd verify` prints it: one line per finding, then a summary.
pub fn render_report(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&format!("FAIL {f}\n"));
    }
    if let Some((after, why)) = &report.unreadable {
        out.push_str(&format!(
            "FAIL the log could not be read after position {after}: {why}\n"
        ));
    }
    let verdict = if report.is_ok() { "ok" } else { "FAILED" };
    out.push_str(&format!(
        "{verdict}: {} events in {} streams, {} findings\n",
        report.events,
        report.streams,
        report.findings.len() + usize::from(report.unreadable.is_some())
    ));
    out
}

/// The last event (version and hash) of each stream in an export: anchors for `verify`.
pub fn anchors(input: impl BufRead) -> anyhow::Result<Vec<(Uuid, u64, [u8; HASH_LEN])>> {
    let mut input = input;
    // An NDJSON record starts with `{`; a MessagePack one with a map marker.
    let format = match input.fill_buf()?.first() {
        Some(b'{') | None => Format::Ndjson,
        Some(_) => Format::Msgpack,
    };
    let mut last: HashMap<Uuid, (u64, [u8; HASH_LEN])> = HashMap::new();
    for record in Records::new(input, format) {
        let e = record?;
        let head = last.entry(e.stream_id).or_insert((e.version, e.hash));
        if e.version >= head.0 {
            *head = (e.version, e.hash);
        }
    }
    Ok(last.into_iter().map(|(s, (v, h))| (s, v, h)).collect())
}

/// `ticketd verify`: prints the report; an error (so a non-zero exit) on any finding.
pub async fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let verifier = match &args.anchor {
        None => Verifier::new(),
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let anchors = anchors(BufReader::new(file))
                .with_context(|| format!("reading anchors from {}", path.display()))?;
            // An empty file (an export cut short by an older build, a wrong path) anchors
            // nothing: the check would pass without one.
            if anchors.is_empty() {
                bail!(
                    "{} holds no events: an anchor is an earlier export of the log",
                    path.display()
                );
            }
            Verifier::with_anchors(anchors)
        }
    };
    let store = crate::app::open_existing(&args.store).await?;
    crate::app::then_close(store.as_ref(), verify_open(args, store.as_ref(), verifier)).await
}

async fn verify_open(
    args: &VerifyArgs,
    store: &dyn EventStore,
    verifier: Verifier,
) -> anyhow::Result<()> {
    let report = verify_store_with(store, verifier)
        .await
        .context("reading the log")?;
    print!("{}", render_report(&report));
    if !report.is_ok() {
        bail!("the log failed verification");
    }
    if args.log_only {
        return Ok(());
    }
    // Each projection against a rebuild of it in a scratch schema or file, at its checkpoint.
    let findings = ticketd_projections::rebuild::check_all(store, &ticketd_projections::all())
        .await
        .context("comparing the projections with a rebuild")?;
    for (projection, finding) in &findings {
        println!("projection {projection}: {finding}");
    }
    if !findings.is_empty() {
        bail!("{} projection finding(s)", findings.len());
    }
    println!("ok: every projection equals a rebuild from the log");
    Ok(())
}

/// Appends one event to `out` in `format`; `lines` keeps its buffers between calls.
pub fn encode(
    format: Format,
    e: EventRef<'_>,
    lines: &mut LineWriter,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    match format {
        Format::Ndjson => lines.write(e, false, out),
        Format::Msgpack => ticketd_commands::packed::encode(e, out)?,
    }
    Ok(())
}

/// Which events an export takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection {
    pub after: Option<Position>,
    pub until: Option<Position>,
    pub ticket: Option<Uuid>,
}

impl Selection {
    fn takes(&self, position: Position) -> bool {
        self.after.is_none_or(|a| position > a) && self.until.is_none_or(|u| position <= u)
    }
}

/// Writes the selected events to `out` in log order; returns how many, and `out`.
pub async fn export_to<W: Write + Send + 'static>(
    store: &dyn EventStore,
    selection: Selection,
    format: Format,
    mut out: W,
) -> anyhow::Result<(u64, W)> {
    let mut written = 0u64;
    if let Some(ticket) = selection.ticket {
        let mut buf = Vec::new();
        let mut lines = LineWriter::new();
        for e in store.read_stream(ticket, 0).await? {
            if selection.takes(e.position) {
                encode(format, (&e).into(), &mut lines, &mut buf)?;
                written += 1;
            }
        }
        out.write_all(&buf)?;
        return Ok((written, out));
    }
    // Reading a page overlaps encoding and writing the one before: this task waits for the
    // store while a blocking thread encodes and writes. Writing there too keeps this task
    // free for the next read.
    let mut after = selection.after.unwrap_or(Position::START);
    let mut idle = Some(out);
    let mut encoding: Option<tokio::task::JoinHandle<anyhow::Result<(Encoded, W)>>> = None;
    loop {
        let previous = async {
            match encoding.take() {
                Some(task) => Some(task.await),
                None => None,
            }
        };
        let (batch, previous) = tokio::join!(store.read_batch(after, EXPORT_PAGE), previous);
        if let Some(done) = previous {
            let (page, out) = done.context("the encoding thread failed")??;
            written += page.count;
            if page.finished {
                return Ok((written, out));
            }
            idle = Some(out);
        }
        let batch = batch?;
        let Some(last) = batch.last_position() else {
            break;
        };
        after = last;
        let Some(mut out) = idle.take() else {
            bail!("the export's writer is still in use");
        };
        encoding = Some(tokio::task::spawn_blocking(move || {
            let page = encode_page(format, selection, &batch, &mut out)?;
            Ok((page, out))
        }));
    }
    match idle {
        Some(out) => Ok((written, out)),
        None => bail!("the export's writer is still in use"),
    }
}

/// What a page of an export came to.
struct Encoded {
    count: u64,
    /// The page reached the end of the selection.
    finished: bool,
}

/// Encodes `batch` and writes it to `out`. (Encoding it in two halves on two threads was
/// tried: no faster on two cores, where PostgreSQL and the reading task need the other one.)
fn encode_page(
    format: Format,
    selection: Selection,
    batch: &EventBatch,
    out: &mut dyn Write,
) -> anyhow::Result<Encoded> {
    let mut bytes = Vec::with_capacity(batch.len() * 1024);
    let mut page = Encoded {
        count: 0,
        finished: false,
    };
    let mut lines = LineWriter::new();
    for e in batch.iter() {
        let e = e?;
        if !selection.takes(e.position) {
            page.finished = true;
            break;
        }
        encode(format, e, &mut lines, &mut bytes)?;
        page.count += 1;
    }
    out.write_all(&bytes)?;
    Ok(page)
}

/// `ticketd export`.
pub async fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let store = crate::app::open_existing(&args.store).await?;
    let selection = Selection {
        after: args.after,
        until: args.until,
        ticket: args.ticket,
    };
    // To stdout (`-`) or to what is not a regular file (a pipe, `/dev/stdout`): written as it
    // goes, since nothing can be renamed over it.
    let streamed = args.output == Path::new("-")
        || std::fs::metadata(&args.output).is_ok_and(|m| !m.is_file());
    let n = if streamed {
        crate::app::then_close(store.as_ref(), async {
            let out: Box<dyn Write + Send> = if args.output == Path::new("-") {
                Box::new(std::io::stdout())
            } else {
                Box::new(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&args.output)
                        .with_context(|| format!("opening {}", args.output.display()))?,
                )
            };
            let (n, mut out) =
                export_to(store.as_ref(), selection, args.format, BufWriter::new(out)).await?;
            out.flush()?;
            Ok(n)
        })
        .await?
    } else {
        export_to_file(store.as_ref(), selection, args).await?
    };
    eprintln!("exported {n} events");
    Ok(())
}

/// An export to a file: written beside it first, synced and renamed over it once whole. Cut
/// short (a kill, a lost connection), it would have ended cleanly between two events and
/// looked complete, and would already have emptied the file it replaces (often the last
/// anchor). Readable by its owner alone, as the log holds what customers wrote.
async fn export_to_file(
    store: &dyn EventStore,
    selection: Selection,
    args: &ExportArgs,
) -> anyhow::Result<u64> {
    let mut partial = args.output.clone().into_os_string();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = crate::app::then_close(store, async {
        let mut options = std::fs::OpenOptions::new();
        crate::auth::owner_only(options.write(true).create(true).truncate(true));
        let file = options
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let (n, out) = export_to(store, selection, args.format, BufWriter::new(file)).await?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &args.output).with_context(|| {
            format!(
                "renaming {} to {}",
                partial.display(),
                args.output.display()
            )
        })?;
        Ok(n)
    })
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// The longest NDJSON line read: far above any event's (text and fields are bounded to a few
/// MiB, hex doubles the binary members).
const LINE_MAX: u64 = 64 << 20;

/// Reads exported events one at a time.
pub struct Records<R> {
    input: R,
    format: Format,
    line: usize,
    text: Vec<u8>,
}

impl<R: BufRead> Records<R> {
    pub fn new(input: R, format: Format) -> Self {
        Records {
            input,
            format,
            line: 0,
            text: Vec::new(),
        }
    }

    fn next_record(&mut self) -> anyhow::Result<Option<StoredEvent>> {
        self.line += 1;
        match self.format {
            Format::Ndjson => loop {
                self.text.clear();
                // Bounded: a file with no newline would otherwise be read whole into memory.
                // Bytes, so that a line cut at the bound is told by its length, not by a
                // character the cut split.
                let read = std::io::Read::take(&mut self.input, LINE_MAX + 1)
                    .read_until(b'\n', &mut self.text)
                    .with_context(|| format!("line {}", self.line))?;
                if read == 0 {
                    return Ok(None);
                }
                if read as u64 > LINE_MAX {
                    bail!("line {} is longer than {} MiB", self.line, LINE_MAX >> 20);
                }
                if self.text.iter().all(u8::is_ascii_whitespace) {
                    self.line += 1;
                    continue;
                }
                let record: AuditEvent = serde_json::from_slice(&self.text)
                    .with_context(|| format!("line {}", self.line))?;
                return record
                    .to_stored()
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("line {}: {e}", self.line));
            },
            Format::Msgpack => {
                if self.input.fill_buf()?.is_empty() {
                    return Ok(None);
                }
                ticketd_commands::packed::decode(&mut self.input)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("event {}: {e}", self.line))
            }
        }
    }
}

impl<R: BufRead> Iterator for Records<R> {
    type Item = anyhow::Result<StoredEvent>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Loads `records` into the empty store `target`, in one transaction. Every chain is checked
/// on the way in; on any finding nothing is written.
pub async fn import_from(
    target: &OpenedStore,
    records: impl Iterator<Item = anyhow::Result<StoredEvent>>,
) -> anyhow::Result<Imported> {
    let mut importer = match target {
        OpenedStore::Sqlite(s) => Importer::sqlite(s).await,
        OpenedStore::Postgres(s) => Importer::postgres(s).await,
    }
    .map_err(|e| match e {
        ticketd_commands::StoreError::Conflict { .. } => {
            anyhow::anyhow!("the target store is not empty; import needs an empty store")
        }
        e => e.into(),
    })?;
    let mut verifier = Verifier::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut failure = None;
    for record in records {
        match record {
            Ok(e) => {
                verifier.check(&e);
                batch.push(e);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if batch.len() == BATCH {
            if let Err(e) = importer.push(&batch).await {
                failure = Some(e.into());
                break;
            }
            batch.clear();
        }
    }
    if failure.is_none() && !batch.is_empty() {
        if let Err(e) = importer.push(&batch).await {
            failure = Some(e.into());
        }
    }
    let (report, heads) = verifier.finish_with_heads();
    if failure.is_none() && !report.is_ok() {
        failure = Some(anyhow::anyhow!(
            "the export fails verification; nothing was imported:\n{}",
            render_report(&report).trim_end()
        ));
    }
    if let Some(e) = failure {
        importer.rollback().await?;
        return Err(e);
    }
    Ok(importer.commit(heads).await?)
}

/// `ticketd import`.
pub async fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let target = OpenedStore::open(&args.store, true).await?;
    let input: Box<dyn BufRead> = if args.input == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin().lock()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("opening {}", args.input.display()))?;
        Box::new(BufReader::new(file))
    };
    let imported = crate::app::then_close(
        target.store(),
        import_from(&target, Records::new(input, args.format)),
    )
    .await?;
    eprintln!(
        "imported {} events; ticket numbers continue after {}",
        imported.events, imported.max_ticket_number
    );
    Ok(())
}

/// Reads a whole export from bytes (for tests and small files).
pub fn read_records(bytes: &[u8], format: Format) -> anyhow::Result<Vec<StoredEvent>> {
    Records::new(bytes, format).collect()
}

#[cfg(test)]
mod tests {
    use super::{Format, Records, LINE_MAX};

    fn first_error(input: Vec<u8>) -> String {
        let mut records = Records::new(std::io::Cursor::new(input), Format::Ndjson);
        let error = records.next().expect("a record").expect_err("refused");
        format!("{error:#}")
    }

    #[test]
    fn an_overlong_or_undecodable_line_is_refused_by_its_number() {
        let mut long = b"\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', LINE_MAX as usize - 1));
        // A character the bound cuts in two.
        long.extend("é".as_bytes());
        let error = first_error(long);
        assert!(error.starts_with("line 2 is longer than 64 MiB"), "{error}");
        let error = first_error(b"\n\xff\xfe{}\n".to_vec());
        assert!(error.starts_with("line 2"), "{error}");
    }
}
