//! Embeds the vendored OCA JSON schemas (node/schemas/) into the binary as a static table, so the
//! node needs no schema files at run time.

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut table = String::from("pub(crate) static SCHEMAS: &[(&str, &str, &str)] = &[\n");
    for dir in ["v16", "v201", "v21"] {
        let mut files: Vec<_> = fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("schemas/{dir}: {e}"))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8 schema name");
            writeln!(
                table,
                "    ({dir:?}, {stem:?}, include_str!({:?})),",
                path.display().to_string()
            )
            .expect("writing to a String");
        }
    }
    table.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("schemas.rs");
    fs::write(out, table).expect("writing schemas.rs");
}
