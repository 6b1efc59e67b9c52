//! `crdgen`: writes the CustomResourceDefinitions of Silverline's API to `crds/generated/`.
//! Run `cargo run -p silverline-crds --bin crdgen` after changing a type; a test fails while the committed copy
//! differs from what the types generate.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated");
    for (file, text) in silverline_crds::generated::manifests() {
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let path = dir.join(file);
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    std::process::ExitCode::SUCCESS
}
