//! Backup orchestration tests with fakes.
use super::*;
