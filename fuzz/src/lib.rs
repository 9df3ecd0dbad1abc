//! Shared by the fuzz targets: how one fuzz input becomes a settings byte and the sequence of
//! reads a connection sees, so that the fuzzer explores chunkings as well as contents.

/// Input layout: byte 0 is the target's settings; byte 1 holds `n` (mod 16), the number of
/// read sizes in the next `n` bytes (each 1..=255, a 0 counts as 1); the rest is the stream,
/// cut into reads of those sizes in a cycle. `n == 0` delivers the stream in one read.
pub struct Input<'a> {
    pub settings: u8,
    pub stream: &'a [u8],
    pub reads: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&settings, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n % 16).min(rest.len());
        let (sizes, stream) = rest.split_at(n);
        let mut reads = Vec::new();
        if sizes.is_empty() {
            reads.push(stream);
        } else {
            let mut rest = stream;
            for &size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (read, tail) = rest.split_at(usize::from(size.max(1)).min(rest.len()));
                reads.push(read);
                rest = tail;
            }
        }
        Some(Input {
            settings,
            stream,
            reads,
        })
    }
}
