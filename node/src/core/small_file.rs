//! Reading the small files a config names (certificates, keys, the secrets file).
//!
//! A path in a config can name anything: a device such as `/dev/zero` or a FIFO would make a
//! plain read run (and allocate) for ever. These files are a few KiB, so anything that is not a
//! regular file, or is larger than [`MAX_BYTES`], is refused with a clear error instead.

use std::io::{Error, ErrorKind, Read as _};
use std::path::Path;

/// Far above any certificate chain, key or secrets file.
pub const MAX_BYTES: u64 = 1024 * 1024;

pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{} bytes, more than the {MAX_BYTES} allowed", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while it is read.
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "the file grew past the limit while read",
        ));
    }
    Ok(bytes)
}

pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_big_files_are_refused() {
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_err());
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_BYTES as usize + 1]).unwrap();
        assert_eq!(read(&big).unwrap_err().kind(), ErrorKind::InvalidData);
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, "x").unwrap();
        assert_eq!(read_to_string(&ok).unwrap(), "x");
    }
}
