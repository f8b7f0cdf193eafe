//! One SQL text for both backends: statements are written with `?` placeholders (SQLite's) and
//! renumbered to `$n` for PostgreSQL, with values bound from a small enum. Read models use
//! only types both backends share (integers, text, UUIDs), so their SQL need not diverge.

use std::borrow::Cow;

use sqlx::{PgConnection, Row, SqliteConnection};
use uuid::Uuid;

use ticketd_commands::pgcopy::put_field;
use ticketd_commands::StoreError;

/// A connection (usually inside a transaction) of either backend.
pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    I64(i64),
    Text(String),
    OptText(Option<String>),
    OptI64(Option<i64>),
    Uuid(Uuid),
    /// A PostgreSQL search vector's words, between blanks: bound as text, which the statement
    /// reads as the vector (`?::tsvector`); sent to `COPY` in the vector's binary form
    /// ([`tsvector_binary`]), which the server takes without parsing.
    Vector(String),
}

/// `?` placeholders renumbered as `$1, $2, …` for PostgreSQL.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Text as PostgreSQL can hold it: its `text` refuses U+0000, which becomes U+FFFD. Every text
/// value sent to PostgreSQL from here goes through this (binds, multi-row arrays, `COPY`), so
/// no event's text, however it reached the log (an older build, `ticketd import`), can fail a
/// projection for good.
pub fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// [`pg_text`] of an owned string, without a copy when there is nothing to replace.
fn pg_text_owned(s: String) -> String {
    match pg_text(&s) {
        Cow::Owned(replaced) => replaced,
        Cow::Borrowed(_) => s,
    }
}

/// Binds every value; `text` maps each text value (identity for SQLite, [`pg_text`] for
/// PostgreSQL).
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {
        bind_all!($q, $binds, |v: &str| v.to_owned())
    };
    ($q:expr, $binds:expr, pg) => {
        bind_all!($q, $binds, |v: &str| pg_text(v).into_owned())
    };
    ($q:expr, $binds:expr, $text:expr) => {{
        let text = $text;
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::I64(v) => q.bind(*v),
                Bind::Text(v) | Bind::Vector(v) => q.bind(text(v)),
                Bind::OptText(v) => q.bind(v.as_deref().map(text)),
                Bind::OptI64(v) => q.bind(*v),
                Bind::Uuid(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// A single-column row value both backends decode the same way.
pub trait Column: Sized {
    fn sqlite(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Self, sqlx::Error>;
    fn postgres(row: &sqlx::postgres::PgRow, i: usize) -> Result<Self, sqlx::Error>;
}

/// [`Column`] for types both drivers decode alike.
macro_rules! columns_decoded_alike {
    ($($t:ty),+) => {$(
        impl Column for $t {
            fn sqlite(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Self, sqlx::Error> {
                row.try_get(i)
            }
            fn postgres(row: &sqlx::postgres::PgRow, i: usize) -> Result<Self, sqlx::Error> {
                row.try_get(i)
            }
        }
    )+};
}

columns_decoded_alike!(i64, String, Option<String>, Option<i64>, Uuid, Option<Uuid>);

/// A whole row of mixed column types, decoded as a tuple of [`Column`]s in select order.
pub trait Columns: Sized {
    fn sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error>;
    fn postgres(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error>;
}

macro_rules! tuple_columns {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Column),+> Columns for ($($t,)+) {
            fn sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
                Ok(($($t::sqlite(row, $i)?,)+))
            }
            fn postgres(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                Ok(($($t::postgres(row, $i)?,)+))
            }
        }
    };
}

tuple_columns!(A 0);
tuple_columns!(A 0, B 1);
tuple_columns!(A 0, B 1, C 2);
tuple_columns!(A 0, B 1, C 2, D 3);
tuple_columns!(A 0, B 1, C 2, D 3, E 4);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16, R 17);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16, R 17, S 18);
tuple_columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11, M 12, N 13, O 14, P 15, Q 16, R 17, S 18, T 19);

/// The first four columns of a row.
pub type Four<A, B, C, D> = (A, B, C, D);

impl Conn<'_> {
    /// The first four columns of every row.
    pub async fn fetch_four<A: Column, B: Column, C: Column, D: Column>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<Four<A, B, C, D>>, StoreError> {
        self.fetch_rows(sql, binds).await
    }

    /// Every row, as a tuple of its columns (see [`Columns`]).
    pub async fn fetch_rows<R: Columns>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<R>, StoreError> {
        self.fetch_rows_with(sql, binds, true).await
    }

    /// [`Self::fetch_rows`], or, with `persistent` false, planned for these very values as
    /// [`Self::fetch_column_unprepared`] is.
    pub async fn fetch_rows_with<R: Columns>(
        &mut self,
        sql: &str,
        binds: &[Bind],
        persistent: bool,
    ) -> Result<Vec<R>, StoreError> {
        match self {
            Conn::Sqlite(c) => {
                let rows = bind_all!(sqlx::query(sql), binds)
                    .fetch_all(&mut **c)
                    .await
                    .map_err(unavailable)?;
                rows.iter()
                    .map(|r| R::sqlite(r).map_err(unavailable))
                    .collect()
            }
            Conn::Postgres(c) => {
                let sql = numbered(sql);
                let rows = bind_all!(sqlx::query(&sql).persistent(persistent), binds, pg)
                    .fetch_all(&mut **c)
                    .await
                    .map_err(unavailable)?;
                rows.iter()
                    .map(|r| R::postgres(r).map_err(unavailable))
                    .collect()
            }
        }
    }

    /// Runs a statement; returns the rows it affected.
    pub async fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<u64, StoreError> {
        match self {
            Conn::Sqlite(c) => bind_all!(sqlx::query(sql), binds)
                .execute(&mut **c)
                .await
                .map(|r| r.rows_affected())
                .map_err(unavailable),
            Conn::Postgres(c) => {
                let sql = numbered(sql);
                bind_all!(sqlx::query(&sql), binds, pg)
                    .execute(&mut **c)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(unavailable)
            }
        }
    }

    /// The first column of every row.
    pub async fn fetch_column<T: Column>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<T>, StoreError> {
        self.fetch_column_with(sql, binds, true).await
    }

    /// Like [`Self::fetch_column`], but PostgreSQL plans the statement for these very values
    /// instead of caching it: a cached statement may settle on a generic plan, which cannot
    /// tell a word in every ticket from a word in three (full-text search).
    pub async fn fetch_column_unprepared<T: Column>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<T>, StoreError> {
        self.fetch_column_with(sql, binds, false).await
    }

    async fn fetch_column_with<T: Column>(
        &mut self,
        sql: &str,
        binds: &[Bind],
        persistent: bool,
    ) -> Result<Vec<T>, StoreError> {
        let rows: Vec<(T,)> = self.fetch_rows_with(sql, binds, persistent).await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// The first two columns of every row.
    pub async fn fetch_pairs<A: Column, B: Column>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<(A, B)>, StoreError> {
        self.fetch_rows(sql, binds).await
    }
}

/// Most placeholders one statement binds: under SQLite's default limit (32,766) and
/// PostgreSQL's (65,535).
pub const MAX_BINDS: usize = 30_000;

impl Conn<'_> {
    /// `head VALUES (?, …), (?, …) tail` over `rows` (each of the same width), in as few
    /// statements as the placeholder limit allows. Rows of one statement must not conflict
    /// with each other when `tail` is an `ON CONFLICT … DO UPDATE`.
    pub async fn insert_rows(
        &mut self,
        head: &str,
        rows: Vec<Vec<Bind>>,
        tail: &str,
    ) -> Result<(), StoreError> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(());
        };
        let one = format!("({})", vec!["?"; width].join(", "));
        self.insert_rows_as(head, &one, rows, tail).await
    }

    /// [`Self::insert_rows`] with each row's values spelled by `one` (its `?` in order), e.g.
    /// `(?, to_tsvector(?))`.
    pub async fn insert_rows_as(
        &mut self,
        head: &str,
        one: &str,
        rows: Vec<Vec<Bind>>,
        tail: &str,
    ) -> Result<(), StoreError> {
        self.rows_as::<i64>(head, one, rows, tail).await.map(drop)
    }

    /// `head` over `rows` as a derived table, then `tail`, returning the first column of what
    /// the statement returns (nothing for an `INSERT` without `RETURNING`). SQLite spells the
    /// rows `VALUES one, one, …`; PostgreSQL `SELECT … FROM unnest($1, $2, …)`, one array per
    /// column, whose text (and so its cached plan) does not depend on the number of rows.
    pub async fn rows_as<T: Column>(
        &mut self,
        head: &str,
        one: &str,
        rows: Vec<Vec<Bind>>,
        tail: &str,
    ) -> Result<Vec<T>, StoreError> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(Vec::new());
        };
        let per = (MAX_BINDS / width.max(1)).max(1);
        let mut out = Vec::new();
        if let Conn::Postgres(c) = self {
            let sql = unnest_sql(head, one, &rows[0], tail)?;
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let chunk: Vec<Vec<Bind>> = rows.by_ref().take(per).collect();
                let mut q = sqlx::query(&sql);
                for column in columns(chunk, width)? {
                    q = match column {
                        ColumnValues::I64(v) => q.bind(v),
                        ColumnValues::Text(v) => q.bind(v),
                        ColumnValues::Uuid(v) => q.bind(v),
                    };
                }
                for row in q.fetch_all(&mut **c).await.map_err(unavailable)? {
                    out.push(T::postgres(&row, 0).map_err(unavailable)?);
                }
            }
            return Ok(out);
        }
        let mut rows = rows.into_iter();
        while rows.len() > 0 {
            let take = sqlite_chunk(rows.len(), per);
            let chunk: Vec<Vec<Bind>> = rows.by_ref().take(take).collect();
            let values = vec![one; chunk.len()].join(", ");
            let binds: Vec<Bind> = chunk.into_iter().flatten().collect();
            out.extend(
                self.fetch_column::<T>(&format!("{head} VALUES {values} {tail}"), &binds)
                    .await?,
            );
        }
        Ok(out)
    }

    /// `sql` with its one `(…)` placeholder group expanded to `(?, ?, …)` for each chunk of
    /// `ids`: every row whose key is among them.
    pub async fn fetch_rows_in<R: Columns>(
        &mut self,
        sql: &str,
        ids: &[uuid::Uuid],
    ) -> Result<Vec<R>, StoreError> {
        if let Conn::Postgres(c) = self {
            // One array: the statement's text, and so its cached plan, is the same for any
            // number of ids.
            let sql = numbered(&sql.replace("IN (…)", "= ANY(?)"));
            let rows = sqlx::query(&sql)
                .bind(ids)
                .fetch_all(&mut **c)
                .await
                .map_err(unavailable)?;
            return rows
                .iter()
                .map(|r| R::postgres(r).map_err(unavailable))
                .collect();
        }
        let mut out = Vec::new();
        let mut rest = ids;
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(sqlite_chunk(rest.len(), MAX_BINDS));
            rest = after;
            let marks = vec!["?"; chunk.len()].join(", ");
            let binds: Vec<Bind> = chunk.iter().map(|id| Bind::Uuid(*id)).collect();
            out.extend(
                self.fetch_rows::<R>(&sql.replace("(…)", &format!("({marks})")), &binds)
                    .await?,
            );
        }
        Ok(out)
    }
}

/// SQLite: how many of `left` rows (at most `most`) the next statement takes: the largest
/// power of two that fits. A statement's text holds one `?` group per row, so each row count
/// is a statement of its own to prepare (about 10 µs a row for the `tickets` upsert), and
/// batches of every size from 1 to 500 rows churned the connection's statement cache. In
/// powers of two a batch is a few statements whose shapes stay cached.
fn sqlite_chunk(left: usize, most: usize) -> usize {
    let n = left.min(most).max(1);
    1 << n.ilog2()
}

/// One column of a PostgreSQL multi-row insert, bound as one array.
enum ColumnValues {
    I64(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Uuid(Vec<Uuid>),
}

/// `rows` turned into columns; every row must bind the same kinds as the first.
fn columns(rows: Vec<Vec<Bind>>, width: usize) -> Result<Vec<ColumnValues>, StoreError> {
    let mut out: Vec<ColumnValues> = match rows.first() {
        Some(first) => first
            .iter()
            .map(|b| match b {
                Bind::I64(_) | Bind::OptI64(_) => ColumnValues::I64(Vec::with_capacity(rows.len())),
                Bind::Text(_) | Bind::OptText(_) | Bind::Vector(_) => {
                    ColumnValues::Text(Vec::with_capacity(rows.len()))
                }
                Bind::Uuid(_) => ColumnValues::Uuid(Vec::with_capacity(rows.len())),
            })
            .collect(),
        None => return Ok(Vec::new()),
    };
    for row in rows {
        if row.len() != width {
            return Err(StoreError::Unavailable(format!(
                "a row of {} values among rows of {width}",
                row.len()
            )));
        }
        for (column, value) in out.iter_mut().zip(row) {
            match (column, value) {
                (ColumnValues::I64(c), Bind::I64(v)) => c.push(Some(v)),
                (ColumnValues::I64(c), Bind::OptI64(v)) => c.push(v),
                (ColumnValues::Text(c), Bind::Text(v) | Bind::Vector(v)) => {
                    c.push(Some(pg_text_owned(v)))
                }
                (ColumnValues::Text(c), Bind::OptText(v)) => c.push(v.map(pg_text_owned)),
                (ColumnValues::Uuid(c), Bind::Uuid(v)) => c.push(v),
                (_, value) => {
                    return Err(StoreError::Unavailable(format!(
                        "a column of mixed kinds in a multi-row insert ({value:?})"
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// PostgreSQL: `head SELECT … FROM unnest($1, $2, …) tail`, where `one` (a row's values, such
/// as `(?, to_tsvector(?))`) is applied to each row of the arrays. The text does not depend on
/// the number of rows, so the statement is parsed and planned once per connection rather than
/// for each batch size, and binds one array per column rather than a value per cell.
fn unnest_sql(head: &str, one: &str, first: &[Bind], tail: &str) -> Result<String, StoreError> {
    let inner = one
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            StoreError::Unavailable(format!("row template {one:?} lacks parentheses"))
        })?;
    let mut exprs = String::with_capacity(inner.len() + 8 * first.len());
    let mut n = 0;
    for c in inner.chars() {
        if c == '?' {
            n += 1;
            exprs.push_str(&format!("u.c{n}"));
        } else {
            exprs.push(c);
        }
    }
    if n != first.len() {
        return Err(StoreError::Unavailable(format!(
            "row template {one:?} has {n} placeholders for {} values",
            first.len()
        )));
    }
    let arrays: Vec<String> = first
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let kind = match b {
                Bind::I64(_) | Bind::OptI64(_) => "int8",
                Bind::Text(_) | Bind::OptText(_) | Bind::Vector(_) => "text",
                Bind::Uuid(_) => "uuid",
            };
            format!("${}::{kind}[]", i + 1)
        })
        .collect();
    let names: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
    Ok(format!(
        "{head} SELECT {exprs} FROM unnest({}) AS u({}) {tail}",
        arrays.join(", "),
        names.join(", ")
    ))
}

/// Rows in the binary format of PostgreSQL's `COPY … FROM STDIN (FORMAT binary)`, the bulk
/// path's load (see `bulk`): each value as its type's binary form (`uuid`, `int8`, `text`:
/// every column a [`Bind`] goes to is one of these), so PostgreSQL stores exactly what the same
/// [`Bind`]s inserted would, and reads each field by its length instead of scanning text for
/// delimiters and escapes and parsing numbers (which was 9 % of a rebuild's CPU).
#[derive(Debug, Default)]
pub struct CopyRows {
    bytes: Vec<u8>,
}

impl CopyRows {
    /// Appends one row: its field count, then each field's length (-1 for NULL) and bytes.
    pub fn push(&mut self, row: &[Bind]) -> Result<(), StoreError> {
        let fields = i16::try_from(row.len())
            .map_err(|_| StoreError::Unavailable(format!("a row of {} fields", row.len())))?;
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        for value in row {
            match value {
                Bind::I64(v) | Bind::OptI64(Some(v)) => {
                    put_field(&mut self.bytes, &v.to_be_bytes())
                }
                Bind::Text(v) | Bind::OptText(Some(v)) => {
                    put_field(&mut self.bytes, pg_text(v).as_bytes())
                }
                Bind::Uuid(v) => put_field(&mut self.bytes, v.as_bytes()),
                Bind::Vector(v) => put_field(&mut self.bytes, &tsvector_binary(&pg_text(v))?),
                Bind::OptText(None) | Bind::OptI64(None) => {
                    self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
                    Ok(())
                }
            }?;
        }
        Ok(())
    }

    /// Bytes held so far.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The rows so far, as rows of their own, leaving this empty with room for as many again.
    pub fn split(&mut self) -> CopyRows {
        CopyRows { bytes: self.take() }
    }

    /// The rows' bytes, without the stream's header and trailer
    /// ([`ticketd_commands::pgcopy::copy_in_header`], `copy_in_trailer`), leaving this empty
    /// with room for as many again (chunks of a stream are alike in size; growing from nothing
    /// each time copied every chunk several times).
    pub fn take(&mut self) -> Vec<u8> {
        let room = self.bytes.capacity();
        std::mem::replace(&mut self.bytes, Vec::with_capacity(room))
    }
}

/// `words` (between blanks) as a `tsvector` in its binary form (PostgreSQL's `tsvectorrecv`):
/// the count of lexemes (int32), then each lexeme's bytes, a NUL, and its count of positions
/// (int16; none here). The lexemes go sorted by their bytes, as PostgreSQL orders them (a
/// prefix before what it begins), and each once: the vector the text input makes of the same
/// words (`'b a b'::tsvector` is `'a' 'b'`), so rows loaded either way compare equal. The
/// binary input sorts only what comes unsorted and never removes a repeat.
pub fn tsvector_binary(words: &str) -> Result<Vec<u8>, StoreError> {
    let mut lexemes: Vec<&str> = words.split_whitespace().collect();
    lexemes.sort_unstable();
    lexemes.dedup();
    let count = i32::try_from(lexemes.len())
        .map_err(|_| StoreError::Unavailable(format!("a vector of {} words", lexemes.len())))?;
    let bytes: usize = lexemes.iter().map(|w| w.len() + 3).sum();
    let mut out = Vec::with_capacity(4 + bytes);
    out.extend_from_slice(&count.to_be_bytes());
    for w in lexemes {
        // A NUL would end the lexeme early and misread the rest ([`pg_text`] replaced them).
        if w.as_bytes().contains(&0) {
            return Err(StoreError::Unavailable("a search word holds a NUL".into()));
        }
        out.extend_from_slice(w.as_bytes());
        out.push(0);
        out.extend_from_slice(&0i16.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{
        columns, numbered, pg_text, sqlite_chunk, tsvector_binary, unnest_sql, Bind, ColumnValues,
        CopyRows,
    };
    use uuid::Uuid;

    /// A vector's binary form: its count, then each lexeme once, in byte order (a prefix
    /// first; `é` after every ASCII letter), NUL-terminated, with no positions.
    #[test]
    fn vectors_go_to_copy_sorted_each_word_once() {
        let got = tsvector_binary("b ab  é a b\u{1F600}x a").expect("vector");
        let mut want = 5i32.to_be_bytes().to_vec();
        for w in ["a", "ab", "b", "b\u{1F600}x", "é"] {
            want.extend_from_slice(w.as_bytes());
            want.push(0);
            want.extend_from_slice(&[0, 0]);
        }
        assert_eq!(got, want);
        assert_eq!(tsvector_binary("").expect("empty"), 0i32.to_be_bytes());
        assert!(
            tsvector_binary("a\0b").is_err(),
            "a NUL would cut the lexeme"
        );
        // As a row's field: its length, then the form.
        let mut rows = CopyRows::default();
        rows.push(&[Bind::Vector("b a".into())]).expect("row");
        let bytes = rows.take();
        assert_eq!(&bytes[..2], &1i16.to_be_bytes());
        assert_eq!(&bytes[2..6], &12i32.to_be_bytes());
        assert_eq!(&bytes[6..], &tsvector_binary("a b").expect("vector")[..]);
    }

    /// SQLite's statements come in a few shapes: every chunk a power of two, none over the
    /// bound, together exactly the rows, biggest first.
    #[test]
    fn sqlite_chunks_are_powers_of_two_that_add_up() {
        let mut shapes = std::collections::HashSet::new();
        for (n, most) in (1..=600).map(|n| (n, 500)).chain([(5_000, 1_666), (3, 1)]) {
            let mut left = n;
            let mut sizes = Vec::new();
            while left > 0 {
                let take = sqlite_chunk(left, most);
                assert!(take.is_power_of_two() && take <= most && take <= left);
                sizes.push(take);
                left -= take;
            }
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{n}: {sizes:?}");
            shapes.extend(sizes);
        }
        assert_eq!(shapes.len(), 11, "1 to 1,024 rows: {shapes:?}");
    }

    #[test]
    fn multi_row_inserts_bind_one_array_per_column() {
        let one = "(?, strip(to_tsvector('simple', ?)), ?)";
        let first = [Bind::Uuid(Uuid::nil()), Bind::OptText(None), Bind::I64(1)];
        assert_eq!(
            unnest_sql("INSERT INTO t (a, b, c)", one, &first, "ON CONFLICT DO NOTHING")
                .expect("sql"),
            "INSERT INTO t (a, b, c) SELECT u.c1, strip(to_tsvector('simple', u.c2)), u.c3 \
             FROM unnest($1::uuid[], $2::text[], $3::int8[]) AS u(c1, c2, c3) ON CONFLICT DO NOTHING"
        );
        assert!(unnest_sql("INSERT INTO t (a)", "(?, ?)", &first[..1], "").is_err());
        assert!(unnest_sql("INSERT INTO t (a)", "?", &first[..1], "").is_err());
        let rows = vec![
            vec![Bind::OptText(None), Bind::I64(1)],
            vec![Bind::Text("x".into()), Bind::OptI64(None)],
        ];
        let cols = columns(rows, 2).expect("columns");
        assert!(matches!(&cols[0], ColumnValues::Text(v) if v == &[None, Some("x".to_owned())]));
        assert!(matches!(&cols[1], ColumnValues::I64(v) if v == &[Some(1), None]));
        let mixed = vec![vec![Bind::I64(1)], vec![Bind::Text("x".into())]];
        assert!(columns(mixed, 1).is_err());
        assert!(columns(vec![vec![Bind::I64(1)], vec![]], 1).is_err());
    }

    /// Every way text reaches PostgreSQL replaces U+0000 (which its `text` refuses), and only
    /// that: binds (through `pg_text`), multi-row arrays and `COPY` rows.
    #[test]
    fn text_for_postgresql_has_no_nul() {
        assert_eq!(pg_text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(
            pg_text("a\tb"),
            std::borrow::Cow::Borrowed("a\tb")
        ));
        let rows = vec![vec![
            Bind::Text("x\0".into()),
            Bind::OptText(Some("\0".into())),
        ]];
        let cols = columns(rows, 2).expect("columns");
        match &cols[..] {
            [ColumnValues::Text(a), ColumnValues::Text(b)] => {
                assert_eq!(a, &vec![Some("x\u{FFFD}".to_owned())]);
                assert_eq!(b, &vec![Some("\u{FFFD}".to_owned())]);
            }
            _ => panic!("two text columns"),
        }
        let mut copy = CopyRows::default();
        copy.push(&[Bind::Text("a\0".into())]).expect("row");
        let mut want = vec![0, 1, 0, 0, 0, 4];
        want.extend_from_slice("a\u{FFFD}".as_bytes());
        assert_eq!(copy.take(), want);
    }

    #[test]
    fn copy_rows_are_binary_fields_by_type() {
        let mut rows = CopyRows::default();
        let id = Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        rows.push(&[
            Bind::Uuid(id),
            Bind::I64(-7),
            Bind::OptI64(None),
            Bind::Text("a\tb\n\\N ü".into()),
            Bind::OptText(None),
            Bind::OptText(Some(String::new())),
            Bind::OptI64(Some(1 << 40)),
        ])
        .expect("row");
        let mut want = vec![0, 7];
        want.extend_from_slice(&[0, 0, 0, 16]);
        want.extend_from_slice(id.as_bytes());
        want.extend_from_slice(&[0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 249]);
        want.extend_from_slice(&[255, 255, 255, 255]);
        want.extend_from_slice(&[0, 0, 0, 9]);
        want.extend_from_slice("a\tb\n\\N ü".as_bytes());
        want.extend_from_slice(&[255, 255, 255, 255]);
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(rows.size(), want.len());
        assert_eq!(rows.take(), want);
        assert_eq!(rows.size(), 0);
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ? AND (c, d) < (?, ?)"),
            "SELECT a FROM t WHERE b = $1 AND (c, d) < ($2, $3)"
        );
    }
}
