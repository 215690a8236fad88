//! A msgpack reader over a frame's bytes that builds nothing: scalars are
//! read in place, strings and binaries borrowed, arrays and maps either
//! walked in place (a [`Reader`] over their items) or taken as a span of
//! their items ([`Seq`]) to read later. A master reads each worker's
//! reports and heartbeats with it instead of an owned `rmpv::Value` tree.
//!
//! Malformed input gives an error, never a panic: lengths are checked
//! against the bytes left before anything is read, and nothing is
//! allocated by length. The depth limit counts as `rmpv`'s
//! `read_value_with_max_depth` does (a value costs 1; a string, an
//! extension, and an array's or a map's items 1 more each; a binary's bytes
//! 1), so a frame is refused for depth exactly when `rmpv` refuses it, and
//! so is anything else `rmpv` refuses (truncation, bytes missing): the
//! unit tests compare the two on random and broken input.

use std::fmt;

/// Why bytes are not msgpack (or too deep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The bytes end inside a value.
    Truncated,
    /// Nested deeper than allowed.
    TooDeep,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated msgpack",
            Error::TooDeep => "msgpack nested too deep",
        })
    }
}

/// One value, read in place: arrays and maps as a span of their items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum V<'a> {
    /// `nil` (and the reserved marker 0xc1, which `rmpv` reads as nil).
    Nil,
    Bool(bool),
    /// A non-negative integer (of any integer marker).
    Pos(u64),
    /// A negative integer.
    Neg(i64),
    F32(f32),
    F64(f64),
    /// A string's bytes (not checked as UTF-8 until [`V::as_str`]).
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Ext,
    Array(Seq<'a>),
    Map(Seq<'a>),
}

/// The items of an array (or the keys and values of a map, in turn),
/// already checked: reading them again cannot fail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seq<'a> {
    /// Items (pairs, for a map).
    pub len: usize,
    body: &'a [u8],
    /// The depth left for each item.
    depth: u16,
}

/// The head of a value read by [`Reader::head`]: an array or a map whose
/// items follow (`len` values, or `len` pairs), to be read at `depth`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head<'a> {
    Scalar(V<'a>),
    Array { len: usize, depth: u16 },
    Map { len: usize, depth: u16 },
}

/// The bytes not read yet.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self.rest.split_first().ok_or(Error::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.rest.len() {
            return Err(Error::Truncated);
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn len8(&mut self) -> Result<usize, Error> {
        Ok(self.byte()? as usize)
    }
    fn len16(&mut self) -> Result<usize, Error> {
        Ok(u16::from_be_bytes(self.be()?) as usize)
    }
    fn len32(&mut self) -> Result<usize, Error> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    /// Reads one value's head with `depth` left: a scalar whole, an array
    /// or a map up to its items (which the caller reads next).
    pub fn head(&mut self, depth: u16) -> Result<Head<'a>, Error> {
        let d = depth.checked_sub(1).ok_or(Error::TooDeep)?;
        let m = self.byte()?;
        let v = match m {
            0x00..=0x7f => V::Pos(m as u64),
            0x80..=0x8f => return self.container(false, (m & 0x0f) as usize, d),
            0x90..=0x9f => return self.container(true, (m & 0x0f) as usize, d),
            0xa0..=0xbf => self.str((m & 0x1f) as usize, d)?,
            0xc0 | 0xc1 => V::Nil,
            0xc2 => V::Bool(false),
            0xc3 => V::Bool(true),
            0xc4 => {
                let n = self.len8()?;
                self.bin(n, d)?
            }
            0xc5 => {
                let n = self.len16()?;
                self.bin(n, d)?
            }
            0xc6 => {
                let n = self.len32()?;
                self.bin(n, d)?
            }
            0xc7 => {
                let n = self.len8()?;
                self.ext(n, d)?
            }
            0xc8 => {
                let n = self.len16()?;
                self.ext(n, d)?
            }
            0xc9 => {
                let n = self.len32()?;
                self.ext(n, d)?
            }
            0xca => V::F32(f32::from_be_bytes(self.be()?)),
            0xcb => V::F64(f64::from_be_bytes(self.be()?)),
            0xcc => V::Pos(self.byte()? as u64),
            0xcd => V::Pos(u16::from_be_bytes(self.be()?) as u64),
            0xce => V::Pos(u32::from_be_bytes(self.be()?) as u64),
            0xcf => V::Pos(u64::from_be_bytes(self.be()?)),
            0xd0 => int(i8::from_be_bytes(self.be()?) as i64),
            0xd1 => int(i16::from_be_bytes(self.be()?) as i64),
            0xd2 => int(i32::from_be_bytes(self.be()?) as i64),
            0xd3 => int(i64::from_be_bytes(self.be()?)),
            0xd4 => self.ext(1, d)?,
            0xd5 => self.ext(2, d)?,
            0xd6 => self.ext(4, d)?,
            0xd7 => self.ext(8, d)?,
            0xd8 => self.ext(16, d)?,
            0xd9 => {
                let n = self.len8()?;
                self.str(n, d)?
            }
            0xda => {
                let n = self.len16()?;
                self.str(n, d)?
            }
            0xdb => {
                let n = self.len32()?;
                self.str(n, d)?
            }
            0xdc => {
                let n = self.len16()?;
                return self.container(true, n, d);
            }
            0xdd => {
                let n = self.len32()?;
                return self.container(true, n, d);
            }
            0xde => {
                let n = self.len16()?;
                return self.container(false, n, d);
            }
            0xdf => {
                let n = self.len32()?;
                return self.container(false, n, d);
            }
            0xe0..=0xff => V::Neg(m as i8 as i64),
        };
        Ok(Head::Scalar(v))
    }

    fn container(&mut self, array: bool, len: usize, d: u16) -> Result<Head<'a>, Error> {
        // rmpv: the items are read one level further down.
        let depth = d.checked_sub(1).ok_or(Error::TooDeep)?;
        Ok(if array {
            Head::Array { len, depth }
        } else {
            Head::Map { len, depth }
        })
    }

    fn str(&mut self, n: usize, d: u16) -> Result<V<'a>, Error> {
        // rmpv: the string, then its bytes, one level down each.
        if d < 2 {
            return Err(Error::TooDeep);
        }
        Ok(V::Str(self.take(n)?))
    }

    fn bin(&mut self, n: usize, d: u16) -> Result<V<'a>, Error> {
        if d < 1 {
            return Err(Error::TooDeep);
        }
        Ok(V::Bin(self.take(n)?))
    }

    fn ext(&mut self, n: usize, d: u16) -> Result<V<'a>, Error> {
        if d < 2 {
            return Err(Error::TooDeep);
        }
        self.byte()?;
        self.take(n)?;
        Ok(V::Ext)
    }

    /// Reads one value whole: an array's or a map's items are checked and
    /// kept as a span to read later.
    #[inline]
    pub fn value(&mut self, depth: u16) -> Result<V<'a>, Error> {
        // The usual numbers and short strings (deep enough for any of
        // them) without the general path.
        if depth >= 3 {
            match *self.rest {
                [m @ 0x00..=0x7f, ref rest @ ..] => {
                    self.rest = rest;
                    return Ok(V::Pos(m as u64));
                }
                [0xcb, a, b, c, d, e, f, g, h, ref rest @ ..] => {
                    self.rest = rest;
                    return Ok(V::F64(f64::from_be_bytes([a, b, c, d, e, f, g, h])));
                }
                [0xcc, a, ref rest @ ..] => {
                    self.rest = rest;
                    return Ok(V::Pos(a as u64));
                }
                [0xcd, a, b, ref rest @ ..] => {
                    self.rest = rest;
                    return Ok(V::Pos(u16::from_be_bytes([a, b]) as u64));
                }
                [m @ 0xa0..=0xbf, ref rest @ ..] if rest.len() >= (m & 0x1f) as usize => {
                    let (s, rest) = rest.split_at((m & 0x1f) as usize);
                    self.rest = rest;
                    return Ok(V::Str(s));
                }
                _ => {}
            }
        }
        self.value_any(depth)
    }

    fn value_any(&mut self, depth: u16) -> Result<V<'a>, Error> {
        match self.head(depth)? {
            Head::Scalar(v) => Ok(v),
            Head::Array { len, depth } => Ok(V::Array(self.span(len, depth)?)),
            Head::Map { len, depth } => {
                // Each pair is two values; a length this large cannot fit.
                let n = len.checked_mul(2).ok_or(Error::Truncated)?;
                let s = self.span(n, depth)?;
                Ok(V::Map(Seq { len, ..s }))
            }
        }
    }

    fn span(&mut self, items: usize, depth: u16) -> Result<Seq<'a>, Error> {
        let start = self.rest;
        for _ in 0..items {
            self.skip(depth)?;
        }
        let used = start.len() - self.rest.len();
        Ok(Seq {
            len: items,
            body: &start[..used],
            depth,
        })
    }

    /// Reads the `pairs` pairs of a map whose head was just read, keeping
    /// the value of the first key equal to each of `keys` (as
    /// `wire::get` finds it) and stepping over the rest.
    pub fn fields<const N: usize>(
        &mut self,
        pairs: usize,
        depth: u16,
        keys: [&str; N],
    ) -> Result<[Option<V<'a>>; N], Error> {
        let mut out = [None; N];
        for _ in 0..pairs {
            let k = self.value(depth)?;
            let slot = k.str_bytes().and_then(|k| key_index(&keys, k));
            let slot = slot.filter(|&i| out[i].is_none());
            match slot {
                Some(i) => out[i] = Some(self.value(depth)?),
                None => self.skip(depth)?,
            }
        }
        Ok(out)
    }

    /// Steps over one value, checking it.
    #[inline]
    pub fn skip(&mut self, depth: u16) -> Result<(), Error> {
        // Numbers, short strings and the like (deep enough for any of
        // them): their size is in their first byte.
        if depth >= 3
            && let Some(&m) = self.rest.first()
        {
            let n = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0..=0xc3 => 1,
                0xa0..=0xbf => 1 + (m & 0x1f) as usize,
                0xcc | 0xd0 => 2,
                0xcd | 0xd1 => 3,
                0xca | 0xce | 0xd2 => 5,
                0xcb | 0xcf | 0xd3 => 9,
                _ => 0,
            };
            if n > 0 {
                self.take(n)?;
                return Ok(());
            }
        }
        self.skip_any(depth)
    }

    fn skip_any(&mut self, depth: u16) -> Result<(), Error> {
        match self.head(depth)? {
            Head::Scalar(_) => Ok(()),
            Head::Array { len, depth } => {
                for _ in 0..len {
                    self.skip(depth)?;
                }
                Ok(())
            }
            Head::Map { len, depth } => {
                for _ in 0..len {
                    self.skip(depth)?;
                    self.skip(depth)?;
                }
                Ok(())
            }
        }
    }
}

/// Which of `keys` is `k` (the length and first byte checked before the rest).
#[inline]
pub fn key_index(keys: &[&str], k: &[u8]) -> Option<usize> {
    let first = *k.first()?;
    keys.iter().position(|x| {
        let x = x.as_bytes();
        x.len() == k.len() && x[0] == first && x == k
    })
}

fn int(i: i64) -> V<'static> {
    if i < 0 { V::Neg(i) } else { V::Pos(i as u64) }
}

impl<'a> Seq<'a> {
    /// An array's items.
    pub fn items(&self) -> Items<'a> {
        Items {
            rd: Reader::new(self.body),
            left: self.len,
            depth: self.depth,
        }
    }

    /// A map's (key, value) pairs, in order.
    pub fn pairs(&self) -> Pairs<'a> {
        Pairs(self.items_raw(self.len))
    }

    fn items_raw(&self, pairs: usize) -> Items<'a> {
        Items {
            rd: Reader::new(self.body),
            left: pairs.saturating_mul(2),
            depth: self.depth,
        }
    }

    /// A map's values under `keys` (see [`Reader::fields`]).
    pub fn fields<const N: usize>(&self, keys: [&str; N]) -> [Option<V<'a>>; N] {
        Reader::new(self.body)
            .fields(self.len, self.depth, keys)
            .unwrap_or([None; N])
    }

    /// The value under string key `key` of a map (the first, as
    /// `wire::get` finds it).
    pub fn get(&self, key: &str) -> Option<V<'a>> {
        self.pairs()
            .find(|(k, _)| k.str_bytes() == Some(key.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// The items of a [`Seq`] array.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    rd: Reader<'a>,
    left: usize,
    depth: u16,
}

impl<'a> Iterator for Items<'a> {
    type Item = V<'a>;
    fn next(&mut self) -> Option<V<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked when the span was taken: an error cannot happen here.
        self.rd.value(self.depth).ok()
    }
}

/// The pairs of a [`Seq`] map.
#[derive(Debug, Clone)]
pub struct Pairs<'a>(Items<'a>);

impl<'a> Iterator for Pairs<'a> {
    type Item = (V<'a>, V<'a>);
    fn next(&mut self) -> Option<(V<'a>, V<'a>)> {
        Some((self.0.next()?, self.0.next()?))
    }
}

impl<'a> V<'a> {
    /// A string that is valid UTF-8 (as `rmpv::Value::as_str`).
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            V::Str(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A string's bytes, valid UTF-8 or not.
    pub fn str_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            V::Str(b) => Some(b),
            _ => None,
        }
    }

    /// A number of either msgpack kind as f64 (as `wire::num`).
    pub fn num(&self) -> Option<f64> {
        match *self {
            V::F64(f) => Some(f),
            V::F32(f) => Some(f as f64),
            V::Pos(n) => Some(n as f64),
            V::Neg(n) => Some(n as f64),
            _ => None,
        }
    }

    /// A non-negative count (as `wire::count`).
    pub fn count(&self) -> Option<u64> {
        match *self {
            V::Pos(n) => Some(n),
            V::F64(f) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => Some(f as u64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            V::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn map(&self) -> Option<Seq<'a>> {
        match *self {
            V::Map(s) => Some(s),
            _ => None,
        }
    }

    pub fn array(&self) -> Option<Seq<'a>> {
        match *self {
            V::Array(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use rmpv::Value;

    fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    /// Does rmpv accept the bytes as one value (with the bytes left)?
    fn rmpv_ok(b: &[u8], depth: u16) -> Option<usize> {
        let mut rd = b;
        rmpv::decode::read_value_with_max_depth(&mut rd, depth as usize)
            .ok()
            .map(|_| rd.len())
    }

    fn ours_ok(b: &[u8], depth: u16) -> Option<usize> {
        let mut rd = Reader::new(b);
        rd.skip(depth).ok().map(|_| rd.rest.len())
    }

    /// A random value with every kind of leaf, up to `depth` levels.
    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        let leaf = depth == 0 || rng.random_range(0..3) == 0;
        if !leaf {
            let n = rng.random_range(0..5);
            return if rng.random() {
                Value::Array((0..n).map(|_| random_value(rng, depth - 1)).collect())
            } else {
                Value::Map(
                    (0..n)
                        .map(|_| (random_value(rng, 0), random_value(rng, depth - 1)))
                        .collect(),
                )
            };
        }
        match rng.random_range(0..12) {
            0 => Value::Nil,
            1 => Value::Boolean(rng.random()),
            2 => Value::from(rng.random::<u64>() >> rng.random_range(0..64)),
            3 => Value::from(-((rng.random::<u64>() >> rng.random_range(1..64)) as i64) - 1),
            4 => Value::F32(rng.random()),
            5 => Value::F64(rng.random::<f64>() * 1e6),
            6 => Value::from("x".repeat(rng.random_range(0..300))),
            7 => Value::from("é→"),
            8 => Value::Binary(vec![7; rng.random_range(0..70)]),
            9 => Value::Ext(
                rng.random(),
                vec![1; [1, 2, 4, 8, 16, 3][rng.random_range(0..6)]],
            ),
            10 => Value::from(""),
            _ => Value::from(rng.random_range(0..128u64)),
        }
    }

    #[test]
    fn depth_is_counted_as_rmpv_counts_it() {
        let leaves = [
            Value::Nil,
            Value::from(5),
            Value::from("s"),
            Value::Binary(vec![1]),
            Value::Ext(1, vec![2]),
            Value::Array(vec![]),
            Value::Map(vec![]),
        ];
        for leaf in &leaves {
            for nest in 0..12 {
                let mut v = leaf.clone();
                for i in 0..nest {
                    v = if i % 2 == 0 {
                        Value::Array(vec![v])
                    } else {
                        Value::Map(vec![(Value::Nil, v)])
                    };
                }
                let b = enc(&v);
                for depth in 0..24 {
                    assert_eq!(
                        ours_ok(&b, depth),
                        rmpv_ok(&b, depth),
                        "{v:?} at depth {depth}"
                    );
                }
            }
        }
    }

    #[test]
    fn random_values_truncations_and_flipped_bytes_are_judged_as_rmpv_judges_them() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..3000 {
            let v = random_value(&mut rng, 5);
            let b = enc(&v);
            assert_eq!(ours_ok(&b, 1024), Some(0), "{v:?}");
            assert_eq!(ours_ok(&b, 16), rmpv_ok(&b, 16), "{v:?}");
            let cut = rng.random_range(0..b.len());
            assert_eq!(ours_ok(&b[..cut], 16), rmpv_ok(&b[..cut], 16));
            let mut m = b.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
            assert_eq!(ours_ok(&m, 16), rmpv_ok(&m, 16), "{m:x?}");
        }
        // Pure noise.
        for _ in 0..3000 {
            let n = rng.random_range(0..64);
            let b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            assert_eq!(ours_ok(&b, 16), rmpv_ok(&b, 16), "{b:x?}");
        }
    }

    #[test]
    fn values_read_back_as_written() {
        let v = Value::Map(vec![
            (Value::from("a"), Value::from(-3)),
            (Value::from("b"), Value::F64(1.5)),
            (Value::from("a"), Value::from(9)),
            (
                Value::from("c"),
                Value::Array(vec![Value::from(1), Value::Nil]),
            ),
            (Value::from("d"), Value::Binary(vec![1, 2])),
            (Value::from(7), Value::from("not a key we read")),
        ]);
        let b = enc(&v);
        let m = Reader::new(&b).value(16).unwrap().map().unwrap();
        assert_eq!(m.len, 6);
        // The first of equal keys, as `wire::get` finds it.
        assert_eq!(m.get("a"), Some(V::Neg(-3)));
        assert_eq!(m.get("b").and_then(|v| v.num()), Some(1.5));
        let [a, c, d, e] = m.fields(["a", "c", "d", "e"]);
        assert_eq!(a, Some(V::Neg(-3)));
        let items: Vec<V> = c.unwrap().array().unwrap().items().collect();
        assert_eq!(items, vec![V::Pos(1), V::Nil]);
        assert_eq!(d, Some(V::Bin(&[1, 2])));
        assert_eq!(e, None);
        // Signed markers holding non-negative numbers are counts, as in rmpv.
        assert_eq!(Reader::new(&[0xd0, 0x05]).value(4), Ok(V::Pos(5)));
        assert_eq!(Reader::new(&[0xd0, 0xfb]).value(4), Ok(V::Neg(-5)));
        assert_eq!(V::F64(3.0).count(), Some(3));
        assert_eq!(V::F64(-1.0).count(), None);
        assert_eq!(V::F32(3.0).count(), None);
        assert_eq!(V::Str(&[0xff]).as_str(), None);
        assert_eq!(Reader::new(&[0xc1]).value(4), Ok(V::Nil));
    }

    #[test]
    fn huge_lengths_and_deep_nesting_fail_fast_without_allocating() {
        // An array, a map, a string, a binary and an extension, each
        // claiming 4 GiB (or 4 G items) with a few bytes behind.
        for head in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            let mut b = head.to_vec();
            b.extend_from_slice(&[0x01; 8]);
            let t = std::time::Instant::now();
            assert_eq!(
                Reader::new(&b).value(16),
                Err(Error::Truncated),
                "{head:x?}"
            );
            assert_eq!(Reader::new(&b).skip(16), Err(Error::Truncated));
            assert!(t.elapsed() < std::time::Duration::from_millis(100));
        }
        // A million levels: refused at the limit, no stack overflow.
        let b = vec![0x91u8; 1_000_000];
        assert_eq!(Reader::new(&b).skip(16), Err(Error::TooDeep));
        assert_eq!(Reader::new(&b).value(16), Err(Error::TooDeep));
        // Truncated inside every kind of head.
        for b in [
            &[0xcd, 0x01][..],
            &[0xcb, 0, 0, 0],
            &[0xd9],
            &[0xa3, b'a'],
            &[0x92, 0x01],
            &[0x81, 0x01],
            &[0xd4, 0x01],
            &[],
        ] {
            assert_eq!(Reader::new(b).value(16), Err(Error::Truncated), "{b:x?}");
        }
    }
}
