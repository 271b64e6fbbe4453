//! Worker threads that fail loudly: a panic inside a job becomes that job's error, so a
//! pool never waits forever for a reply a dead thread will not send, and joining a
//! thread that panicked anyway is an error of the run.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`). A
/// downcast, and the right tool: a panic's payload is a `Box<dyn Any>` by definition.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}

/// Runs one job; a panic in it is returned as `Err` with the panic's message.
pub fn catch<T>(job: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(job))
        .map_err(|p| format!("a worker thread panicked: {}", panic_message(p.as_ref())))
}

/// Joins every thread; the first that panicked (outside a caught job) is the error.
pub fn join_all<T>(threads: Vec<JoinHandle<T>>, what: &str) -> Result<()> {
    let mut first = None;
    for t in threads {
        let name = t.thread().name().unwrap_or("worker").to_string();
        if let Err(p) = t.join() {
            first.get_or_insert_with(|| {
                anyhow!(
                    "{what}: thread {name} panicked: {}",
                    panic_message(p.as_ref())
                )
            });
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        assert_eq!(catch(|| 5), Ok(5));
        let e = catch(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert!(e.contains("panicked: boom 1"), "{e}");
        let e = catch(|| -> u8 { panic!("static") }).unwrap_err();
        assert!(e.contains("static"), "{e}");
        let t = std::thread::Builder::new()
            .name("w-1".into())
            .spawn(|| panic!("in thread"))
            .unwrap();
        let ok = std::thread::spawn(|| ());
        let e = join_all(vec![ok, t], "uploading").unwrap_err().to_string();
        assert!(
            e.contains("uploading: thread w-1 panicked: in thread"),
            "{e}"
        );
        assert!(join_all(vec![std::thread::spawn(|| 1)], "x").is_ok());
    }
}
