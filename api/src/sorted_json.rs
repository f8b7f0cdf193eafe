//! JSON exactly as `serde_json::to_writer(out, &serde_json::to_value(v)?)` writes it, but
//! straight into a buffer: no `Value` tree, no owned strings.
//!
//! The audit record's `actor` and `data` have always been built as `serde_json::Value`s, whose
//! objects (a `BTreeMap` in this build: no `preserve_order`) write their keys sorted; that order
//! is part of the exported bytes (docs/AUDIT.md). So struct fields are written in declaration
//! order and then, at the end of each object, moved into key order. Anything this writer does
//! not reproduce exactly (floats, byte strings, non-string or unsorted map keys, duplicate
//! keys) is refused with [`Unsupported`], and the caller falls back to the `Value` path.

use std::fmt;

use serde::ser::{self, Serialize};

/// A shape this writer does not reproduce exactly; nothing of it is left in the output.
#[derive(Debug)]
pub struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not written by the sorted JSON writer: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_owned()))
}

/// One written `"key":value` of an object, by its byte range in the output.
struct Entry {
    key: &'static str,
    start: usize,
    end: usize,
}

/// Reusable buffers: keep one per thread and call [`SortedJson::write`] for each value.
#[derive(Default)]
pub struct SortedJson {
    /// An object's bytes while its entries are put in key order.
    scratch: Vec<u8>,
    /// The entries of the objects being written, innermost last.
    entries: Vec<Entry>,
}

impl SortedJson {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `value` to `out`; on error `out` is as it was.
    pub fn write<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), Unsupported> {
        let start = out.len();
        self.entries.clear();
        let mut ser = Ser {
            out: &mut *out,
            buffers: self,
        };
        let result = value.serialize(&mut ser);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

struct Ser<'a> {
    out: &'a mut Vec<u8>,
    buffers: &'a mut SortedJson,
}

/// A JSON string, escaped by serde_json itself so the bytes are the same as its own.
fn push_str(out: &mut Vec<u8>, s: &str) -> Result<(), Unsupported> {
    serde_json::to_writer(out, s).map_err(|e| Unsupported(e.to_string()))
}

fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

impl<'a> Ser<'a> {
    fn begin_object(&mut self) -> usize {
        self.out.push(b'{');
        self.buffers.entries.len()
    }

    /// Writes `"variant":` inside a new object, for the externally tagged enum variants.
    fn begin_variant(&mut self, variant: &str) -> Result<(), Unsupported> {
        self.out.push(b'{');
        push_str(self.out, variant)?;
        self.out.push(b':');
        Ok(())
    }
}

impl<'s, 'a> ser::Serializer for &'s mut Ser<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Array<'s, 'a>;
    type SerializeTuple = Array<'s, 'a>;
    type SerializeTupleStruct = Array<'s, 'a>;
    type SerializeTupleVariant = Array<'s, 'a>;
    type SerializeMap = Map<'s, 'a>;
    type SerializeStruct = Object<'s, 'a>;
    type SerializeStructVariant = Object<'s, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        push_int(self.out, v);
        Ok(())
    }
    // A `Value` holds floats and 128-bit integers in its own ways; not worth reproducing.
    fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
        unsupported("f32")
    }
    fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
        unsupported("f64")
    }
    fn serialize_i128(self, _: i128) -> Result<(), Unsupported> {
        unsupported("i128")
    }
    fn serialize_u128(self, _: u128) -> Result<(), Unsupported> {
        unsupported("u128")
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        push_str(self.out, v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        push_str(self.out, v)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
        unsupported("bytes")
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        push_str(self.out, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.begin_variant(variant)?;
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'s, 'a>, Unsupported> {
        self.out.push(b'[');
        Ok(Array {
            ser: self,
            first: true,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'s, 'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Array<'s, 'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Array<'s, 'a>, Unsupported> {
        self.begin_variant(variant)?;
        self.out.push(b'[');
        Ok(Array {
            ser: self,
            first: true,
            variant: true,
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Map<'s, 'a>, Unsupported> {
        self.out.push(b'{');
        Ok(Map {
            ser: self,
            last_key: None,
        })
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Object<'s, 'a>, Unsupported> {
        // serde_json's private tokens (RawValue, arbitrary precision numbers).
        if name.starts_with("$serde_json") {
            return unsupported(name);
        }
        let start = self.out.len();
        let base = self.begin_object();
        Ok(Object {
            ser: self,
            start,
            base,
            variant: false,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Object<'s, 'a>, Unsupported> {
        self.begin_variant(variant)?;
        let start = self.out.len();
        let base = self.begin_object();
        Ok(Object {
            ser: self,
            start,
            base,
            variant: true,
        })
    }
}

pub struct Array<'s, 'a> {
    ser: &'s mut Ser<'a>,
    first: bool,
    /// Inside a `{"variant":…}` wrapper to close too.
    variant: bool,
}

impl Array<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !self.first {
            self.ser.out.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.ser)
    }

    fn close(self) -> Result<(), Unsupported> {
        self.ser.out.push(b']');
        if self.variant {
            self.ser.out.push(b'}');
        }
        Ok(())
    }
}

/// serde's four sequence traits, all the same here: an element, then the closing bracket.
macro_rules! array_impls {
    ($($t:ident :: $f:ident),*) => {$(
        impl ser::$t for Array<'_, '_> {
            type Ok = ();
            type Error = Unsupported;
            fn $f<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
                self.element(value)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.close()
            }
        }
    )*};
}

array_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// A struct: fields are written as they come and put in key order at the end.
pub struct Object<'s, 'a> {
    ser: &'s mut Ser<'a>,
    /// Where the object's `{` is in the output.
    start: usize,
    /// Where its entries start in the entry stack.
    base: usize,
    variant: bool,
}

impl Object<'_, '_> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        if self.ser.buffers.entries.len() > self.base {
            self.ser.out.push(b',');
        }
        let start = self.ser.out.len();
        push_str(self.ser.out, key)?;
        self.ser.out.push(b':');
        value.serialize(&mut *self.ser)?;
        let end = self.ser.out.len();
        self.ser.buffers.entries.push(Entry { key, start, end });
        Ok(())
    }

    fn close(self) -> Result<(), Unsupported> {
        let Ser { out, buffers } = self.ser;
        let entries = &mut buffers.entries[self.base..];
        if !entries.windows(2).all(|w| w[0].key < w[1].key) {
            entries.sort_by_key(|e| e.key);
            // A `Value` would keep only the last of equal keys; not worth reproducing.
            if entries.windows(2).any(|w| w[0].key == w[1].key) {
                return unsupported("a repeated key");
            }
            let body = self.start + 1;
            buffers.scratch.clear();
            buffers.scratch.extend_from_slice(&out[body..]);
            out.truncate(body);
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&buffers.scratch[e.start - body..e.end - body]);
            }
        }
        buffers.entries.truncate(self.base);
        out.push(b'}');
        if self.variant {
            out.push(b'}');
        }
        Ok(())
    }
}

/// serde's two struct traits, the same here.
macro_rules! object_impls {
    ($($t:ident),*) => {$(
        impl ser::$t for Object<'_, '_> {
            type Ok = ();
            type Error = Unsupported;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Unsupported> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.close()
            }
        }
    )*};
}

object_impls!(SerializeStruct, SerializeStructVariant);

/// A map: written as it comes, so its keys must already be strings in strictly increasing
/// order (a `BTreeMap<String, _>` always is); anything else is refused.
pub struct Map<'s, 'a> {
    ser: &'s mut Ser<'a>,
    last_key: Option<String>,
}

impl ser::SerializeMap for Map<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        let key = key.serialize(KeySer)?;
        if self.last_key.as_ref().is_some_and(|last| *last >= key) {
            return unsupported("map keys out of order");
        }
        if self.last_key.is_some() {
            self.ser.out.push(b',');
        }
        push_str(self.ser.out, &key)?;
        self.ser.out.push(b':');
        self.last_key = Some(key);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.ser.out.push(b'}');
        Ok(())
    }
}

/// A map key: strings only.
struct KeySer;

impl ser::Serializer for KeySer {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<String, Unsupported>;
    type SerializeTuple = ser::Impossible<String, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
    type SerializeMap = ser::Impossible<String, Unsupported>;
    type SerializeStruct = ser::Impossible<String, Unsupported>;
    type SerializeStructVariant = ser::Impossible<String, Unsupported>;

    fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
        Ok(v.to_owned())
    }
    fn serialize_char(self, v: char) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Unsupported> {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_i8(self, _: i8) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_i16(self, _: i16) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_i32(self, _: i32) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_i64(self, _: i64) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_u8(self, _: u8) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_u16(self, _: u16) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_u32(self, _: u32) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_u64(self, _: u64) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_f32(self, _: f32) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_f64(self, _: f64) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_none(self) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_unit(self) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        unsupported("a non-string map key")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("a non-string map key")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::*;

    /// What the audit record has always written: through a `Value`.
    fn via_value<T: Serialize>(v: &T) -> Vec<u8> {
        let value = serde_json::to_value(v).expect("to_value");
        serde_json::to_vec(&value).expect("to_vec")
    }

    fn sorted<T: Serialize>(v: &T) -> Result<Vec<u8>, Unsupported> {
        let mut out = b"prefix".to_vec();
        SortedJson::new().write(v, &mut out)?;
        Ok(out[6..].to_vec())
    }

    #[derive(Serialize)]
    struct Inner {
        z: u8,
        a: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        m: Option<i64>,
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        New(Inner),
        Tuple(u8, String),
        Struct { y: bool, b: Vec<u32> },
    }

    #[derive(Serialize)]
    struct Outer {
        zeta: Inner,
        alpha: Vec<Inner>,
        #[serde(rename = "type")]
        kind: &'static str,
        map: BTreeMap<String, Vec<String>>,
        shapes: Vec<Shape>,
        unit: (),
        chars: (char, char),
        text: String,
        small: i8,
        large: u64,
        negative: i64,
        empty: Empty,
        newtype: Wrapper,
    }

    #[derive(Serialize)]
    struct Empty {}

    #[derive(Serialize)]
    struct Wrapper(uuid::Uuid);

    #[test]
    fn nested_shapes_match_the_value_path() {
        let inner = |z| Inner {
            z,
            a: Some(format!("é\"\\\n\u{1}{z}")),
            m: (z % 2 == 0).then_some(-5),
        };
        let v = Outer {
            zeta: inner(1),
            alpha: vec![inner(2), inner(3)],
            kind: "x",
            map: [("b", vec!["1"]), ("a\"", vec![]), ("", vec!["x", "y"])]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
                .collect(),
            shapes: vec![
                Shape::Unit,
                Shape::New(inner(4)),
                Shape::Tuple(7, "t".into()),
                Shape::Struct {
                    y: true,
                    b: vec![1, 2],
                },
            ],
            unit: (),
            chars: ('"', 'ü'),
            text: "\u{7f}\u{2028}tab\t".into(),
            small: i8::MIN,
            large: u64::MAX,
            negative: i64::MIN,
            empty: Empty {},
            newtype: Wrapper(uuid::Uuid::from_u128(0x1234)),
        };
        assert_eq!(
            String::from_utf8(sorted(&v).expect("supported")).expect("utf-8"),
            String::from_utf8(via_value(&v)).expect("utf-8")
        );
    }

    #[test]
    fn what_it_cannot_match_is_refused_and_leaves_nothing() {
        let mut out = b"keep".to_vec();
        let mut json = SortedJson::new();
        assert!(json.write(&vec![1.5f64], &mut out).is_err());
        assert!(json
            .write(&HashMap::from([(1u8, 2u8), (3, 4)]), &mut out)
            .is_err());
        assert!(json.write(&Unsorted, &mut out).is_err());
        assert_eq!(out, b"keep");
        // Still usable after a refusal.
        json.write(&Empty {}, &mut out).expect("empty");
        assert_eq!(out, b"keep{}");
    }

    /// String keys out of order, which a `Value` would sort.
    struct Unsorted;

    impl Serialize for Unsorted {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("b", &1)?;
            map.serialize_entry("a", &2)?;
            map.end()
        }
    }
}
