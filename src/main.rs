//! The `btrfs_to_s3` binary: everything happens in [`btrfs_to_s3::app::main`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    btrfs_to_s3::app::main()
}
