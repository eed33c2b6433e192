//! Waiting on conditions with a deadline. The only sleeps in the harness are the polling
//! intervals in here.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are polled: well below the 100 ms scale of anything the tests measure.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Ok`, and returns that value with the time it took. `Err`
/// says why the condition does not hold yet; the last one is in the panic message.
///
/// # Panics
/// When `deadline` passes first, naming `what` and the last reason.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let why = match check().await {
            Ok(value) => return (value, start.elapsed()),
            Err(why) => why,
        };
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}; last: {why}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`wait_for`] for a plain condition; returns how long it took.
///
/// # Panics
/// When `deadline` passes first.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let ((), took) = wait_for(deadline, what, || {
        let holds = condition();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err("condition false".to_owned())
            }
        }
    })
    .await;
    took
}

/// Polls `check` for the whole of `window` and fails at the first `Err`: for things that must
/// never happen ("node 4 is never up"). Returns how many times it checked.
///
/// # Panics
/// At the first `Err`, with its text and when in the window it came.
pub async fn hold_for<F, Fut>(window: Duration, what: &str, mut check: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < window {
        if let Err(why) = check().await {
            panic!(
                "{what} stopped holding {:?} into a {window:?} window: {why}",
                start.elapsed()
            );
        }
        checks += 1;
        tokio::time::sleep(POLL_EVERY).await;
    }
    checks
}
