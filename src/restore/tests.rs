//! Restore orchestration with fakes.
