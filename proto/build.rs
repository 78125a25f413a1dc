//! Compiles `schema/**/*.proto` with protox (no system `protoc`) and prost, and derives
//! `ErrorCode::meaning()` from the comments on the `ErrorCode` values, so that the table of error
//! codes is declared once, in `common.proto`.

use std::{env, fmt::Write as _, fs, path::PathBuf};

use prost_types::FileDescriptorSet;

const SCHEMA_DIR: &str = "schema";
const FILES: &[&str] = &[
    "agw/v1/common.proto",
    "agw/v1/relay.proto",
    "agw/v1/access.proto",
    "agw/v1/peering.proto",
    "agw/v1/registry.proto",
    "agw/v1/certificate.proto",
    "agw/v1/admin.proto",
    "agw/v1/tasks.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={SCHEMA_DIR}");
    let fds = protox::Compiler::new([SCHEMA_DIR])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(FILES)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("error_meanings.rs"), error_meanings(&fds)?)?;

    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`: decoding from a `Bytes` buffer then slices it
        // instead of copying (payloads, certificates, nonces).
        .bytes(["."])
        // Rare on the wire (only a translated message has one): boxed, so that every
        // `AgentMessage` does not carry its size.
        .boxed(".agw.v1.AgentMessage.translation")
        .boxed(".agw.v1.AgentMessage.session_header")
        .compile_fds(fds)?;
    Ok(())
}

/// Source-info path of enum value `v` of top-level enum `e`: FileDescriptorProto.enum_type (5),
/// index, EnumDescriptorProto.value (2), index.
fn error_meanings(fds: &FileDescriptorSet) -> Result<String, String> {
    let file = fds
        .file
        .iter()
        .find(|f| f.name() == "agw/v1/common.proto")
        .ok_or("common.proto missing from the descriptor set")?;
    let (enum_index, error_enum) = file
        .enum_type
        .iter()
        .enumerate()
        .find(|(_, e)| e.name() == "ErrorCode")
        .ok_or("enum ErrorCode missing from common.proto")?;
    let locations = &file
        .source_code_info
        .as_ref()
        .ok_or("no source info")?
        .location;

    let mut arms = String::new();
    for (value_index, value) in error_enum.value.iter().enumerate() {
        let path = [5, enum_index as i32, 2, value_index as i32];
        let comment = locations
            .iter()
            .find(|l| l.path == path)
            .and_then(|l| l.leading_comments.as_deref())
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("ErrorCode value {} has no comment", value.name()))?;
        writeln!(arms, "            {} => {:?},", value.number(), comment)
            .map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "impl ErrorCode {{\n    /// What the code means, from its comment in `common.proto`.\n    \
         pub const fn meaning(self) -> &'static str {{\n        match self as i32 {{\n{arms}            \
         _ => \"unknown error code\",\n        }}\n    }}\n}}\n"
    ))
}
