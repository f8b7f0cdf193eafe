//! PostgreSQL's binary `COPY` format, both ways, for the bulk paths: pages of the log for
//! export and the NDJSON stream (`COPY (SELECT …) TO STDOUT`), and rows for import
//! (`COPY events FROM STDIN`).
//!
//! Reading a page this way costs the client a copy of the bytes and one walk over the field
//! lengths; every row is decoded only where it is encoded, as an [`EventRef`] into the page,
//! without a `StoredEvent`'s owned strings and vectors. sqlx's rows, by contrast, are decoded
//! column by column by name, which took most of an export's reading time.
//! Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>.

use chrono::DateTime;
use uuid::Uuid;

use ticketd_domain::HASH_LEN;

use crate::store::{EventRef, Position, StoreError, StoreResult, StoredEvent};

/// The columns a page selects, in this order (`tx_id` as sent: a u64 in binary).
pub(crate) const PAGE_COLUMNS: &str = "tx_id, seq, stream_id, version, event_id, event_type, \
                                       schema_version, recorded_at, metadata, payload, \
                                       prev_hash, hash";
const FIELDS: usize = 12;
/// The byte length of each fixed-size column; `None` for text and bytea.
const WIDTHS: [Option<usize>; FIELDS] = [
    Some(8),
    Some(8),
    Some(16),
    Some(8),
    Some(16),
    None,
    Some(8),
    Some(8),
    None,
    None,
    Some(HASH_LEN),
    Some(HASH_LEN),
];

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("COPY data: {what}"))
}

/// Reads big-endian integers off the front of a slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or_else(|| corrupt("length"))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> StoreResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn i16(&mut self) -> StoreResult<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> StoreResult<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// One field's bytes; the columns read here are all `NOT NULL`.
    fn field(&mut self) -> StoreResult<&'a [u8]> {
        let len = self.i32()?;
        let len = usize::try_from(len).map_err(|_| corrupt("a NULL or negative length"))?;
        self.take(len)
    }
}

fn int8(bytes: &[u8]) -> StoreResult<i64> {
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_be_bytes)
        .map_err(|_| corrupt("an int8 that is not 8 bytes"))
}

/// The position in the row starting at `start`: its first two fields.
fn position_at(data: &[u8], start: usize) -> StoreResult<Position> {
    let mut r = Reader {
        bytes: data,
        at: start + 2,
    };
    let tx = <[u8; 8]>::try_from(r.field()?)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("a tx_id that is not 8 bytes"))?;
    let seq = u64::try_from(int8(r.field()?)?).map_err(|_| corrupt("a negative seq"))?;
    Ok(Position { tx, seq })
}

/// A page of the log as binary `COPY` rows: the bytes, and where each row starts.
#[derive(Debug, Clone)]
pub struct CopyRows {
    data: Vec<u8>,
    rows: Vec<usize>,
    last: Option<Position>,
}

impl CopyRows {
    /// Checks the header and every row's shape (field count, fixed widths) and finds the rows.
    pub fn parse(data: Vec<u8>) -> StoreResult<CopyRows> {
        let mut r = Reader {
            bytes: &data,
            at: 0,
        };
        if r.take(SIGNATURE.len())? != SIGNATURE {
            return Err(corrupt("no binary COPY signature"));
        }
        let _flags = r.i32()?;
        let extension = usize::try_from(r.i32()?).map_err(|_| corrupt("header"))?;
        r.take(extension)?;
        let mut rows = Vec::new();
        loop {
            let start = r.at;
            let count = r.i16()?;
            if count == -1 {
                break;
            }
            if usize::try_from(count).ok() != Some(FIELDS) {
                return Err(corrupt(format!("a row of {count} fields, not {FIELDS}")));
            }
            for width in WIDTHS {
                let field = r.field()?;
                if width.is_some_and(|w| w != field.len()) {
                    return Err(corrupt(format!(
                        "a field of {} bytes, not {width:?}",
                        field.len()
                    )));
                }
            }
            rows.push(start);
        }
        if r.at != data.len() {
            return Err(corrupt("bytes after the end"));
        }
        let last = match rows.last() {
            Some(&start) => Some(position_at(&data, start)?),
            None => None,
        };
        Ok(CopyRows { data, rows, last })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn last_position(&self) -> Option<Position> {
        self.last
    }

    /// Row `i`, decoded with the same checks as `read_all`'s rows.
    pub fn get(&self, i: usize) -> StoreResult<EventRef<'_>> {
        let start = *self.rows.get(i).ok_or_else(|| corrupt("no such row"))?;
        let position = position_at(&self.data, start)?;
        let mut r = Reader {
            bytes: &self.data,
            at: start + 2,
        };
        r.field()?;
        r.field()?;
        let stream_id = Uuid::from_slice(r.field()?).map_err(corrupt)?;
        let version =
            u64::try_from(int8(r.field()?)?).map_err(|_| corrupt("a negative version"))?;
        let event_id = Uuid::from_slice(r.field()?).map_err(corrupt)?;
        let event_type = std::str::from_utf8(r.field()?).map_err(corrupt)?;
        let schema_version = u32::try_from(int8(r.field()?)?)
            .map_err(|_| corrupt("a schema version out of range"))?;
        let micros = int8(r.field()?)?;
        let recorded_at = micros
            .checked_add(PG_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| corrupt(format!("recorded_at out of range: {micros}")))?;
        let metadata = r.field()?;
        let payload = r.field()?;
        let prev_hash = <&[u8; HASH_LEN]>::try_from(r.field()?).map_err(corrupt)?;
        let hash = <&[u8; HASH_LEN]>::try_from(r.field()?).map_err(corrupt)?;
        Ok(EventRef {
            position,
            stream_id,
            version,
            event_id,
            event_type,
            schema_version,
            recorded_at,
            metadata,
            payload,
            prev_hash,
            hash,
        })
    }
}

/// The start of a binary `COPY … FROM STDIN` stream.
pub fn copy_in_header(out: &mut Vec<u8>) {
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// The end of a binary `COPY … FROM STDIN` stream.
pub fn copy_in_trailer(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// One field of a binary `COPY` row: its length, then its bytes.
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) -> StoreResult<()> {
    let len = i32::try_from(bytes.len()).map_err(|_| corrupt("a field beyond 2 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The columns [`copy_in_row`] writes, for `COPY events (…) FROM STDIN (FORMAT binary)`.
pub const IMPORT_COLUMNS: &str = "stream_id, version, event_id, event_type, schema_version, \
                                  recorded_at, metadata, payload, prev_hash, hash";

/// One row of `e` for [`IMPORT_COLUMNS`].
pub fn copy_in_row(e: &StoredEvent, out: &mut Vec<u8>) -> StoreResult<()> {
    let version = i64::try_from(e.version)
        .map_err(|_| StoreError::Corrupt("a version is beyond 2^63".into()))?;
    let micros = e
        .recorded_at
        .timestamp_micros()
        .checked_sub(PG_EPOCH_MICROS)
        .ok_or_else(|| StoreError::Corrupt("recorded_at out of range".into()))?;
    out.extend_from_slice(&10i16.to_be_bytes());
    put_field(out, e.stream_id.as_bytes())?;
    put_field(out, &version.to_be_bytes())?;
    put_field(out, e.event_id.as_bytes())?;
    put_field(out, e.event_type.as_bytes())?;
    put_field(out, &i64::from(e.schema_version).to_be_bytes())?;
    put_field(out, &micros.to_be_bytes())?;
    put_field(out, &e.metadata)?;
    put_field(out, &e.payload)?;
    put_field(out, &e.prev_hash)?;
    put_field(out, &e.hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as PostgreSQL would send it, from events.
    fn page(events: &[StoredEvent]) -> Vec<u8> {
        let mut out = Vec::new();
        copy_in_header(&mut out);
        for e in events {
            out.extend_from_slice(&12i16.to_be_bytes());
            put_field(&mut out, &e.position.tx.to_be_bytes()).expect("tx");
            put_field(&mut out, &(e.position.seq as i64).to_be_bytes()).expect("seq");
            // The import row is the rest of the page row.
            let mut row = Vec::new();
            copy_in_row(e, &mut row).expect("row");
            out.extend_from_slice(&row[2..]);
        }
        copy_in_trailer(&mut out);
        out
    }

    fn event(n: u64) -> StoredEvent {
        StoredEvent {
            position: Position {
                tx: u64::MAX - n,
                seq: n,
            },
            stream_id: Uuid::from_u128(u128::from(n) + 1),
            version: n + 1,
            event_id: Uuid::from_u128(u128::from(n) << 70),
            event_type: format!("ticket.ü{n}"),
            schema_version: u32::MAX - n as u32,
            recorded_at: DateTime::from_timestamp_micros(
                1_700_000_000_123_456 - n as i64 * 1_000_000_000_000,
            )
            .expect("time"),
            metadata: vec![n as u8; n as usize],
            payload: vec![7; 3 * n as usize],
            prev_hash: [n as u8; HASH_LEN],
            hash: [255 - n as u8; HASH_LEN],
        }
    }

    #[test]
    fn a_page_reads_back_every_field() {
        let events: Vec<StoredEvent> = (0..40).map(event).collect();
        let rows = CopyRows::parse(page(&events)).expect("parses");
        assert_eq!(rows.len(), 40);
        assert_eq!(rows.last_position(), Some(events[39].position));
        let back: Vec<StoredEvent> = (0..rows.len())
            .map(|i| rows.get(i).map(|e| e.to_stored()))
            .collect::<StoreResult<_>>()
            .expect("rows");
        assert_eq!(back, events);
        let empty = CopyRows::parse(page(&[])).expect("parses");
        assert!(empty.is_empty());
        assert_eq!(empty.last_position(), None);
    }

    #[test]
    fn damaged_pages_are_corrupt_not_a_panic() {
        let good = page(&[event(1), event(2)]);
        for cut in 0..good.len() {
            assert!(
                CopyRows::parse(good[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(CopyRows::parse(extra).is_err());
        // A hash of 31 bytes: the row's shape is checked.
        let mut short = event(3);
        short.metadata.clear();
        let mut bytes = page(&[short]);
        let hash_len = bytes.len() - 2 - HASH_LEN - 4;
        bytes[hash_len..hash_len + 4].copy_from_slice(&31i32.to_be_bytes());
        bytes.remove(hash_len + 4);
        assert!(CopyRows::parse(bytes).is_err());
        // A negative version is found when the row is read.
        let mut negative = page(&[event(4)]);
        let version_at = SIGNATURE.len() + 8 + 2 + 12 + 12 + 20 + 4;
        negative[version_at..version_at + 8].copy_from_slice(&(-5i64).to_be_bytes());
        let rows = CopyRows::parse(negative).expect("shape is fine");
        assert!(matches!(rows.get(0), Err(StoreError::Corrupt(_))));
    }
}
