//! Waiting for a condition with a deadline instead of sleeping.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// The condition did not hold before the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTimeout {
    /// How long the poll waited.
    pub waited: Duration,
    /// How many times the condition was checked.
    pub attempts: u32,
}

impl fmt::Display for PollTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "condition not met after {:?} ({} checks)",
            self.waited, self.attempts
        )
    }
}

impl std::error::Error for PollTimeout {}

/// Calls `check` every `interval` until it returns `Some`, or fails once
/// `timeout` has passed. `check` runs at least once, also with a zero timeout.
///
/// ```no_run
/// # async fn demo() -> Result<(), testkit::PollTimeout> {
/// use std::time::Duration;
/// let n = testkit::poll_until(Duration::from_secs(5), Duration::from_millis(100), async || {
///     Some(42)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn poll_until<T, F>(
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, PollTimeout>
where
    F: AsyncFnMut() -> Option<T>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        if let Some(value) = check().await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PollTimeout {
                waited: now - start,
                attempts,
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_first_some() {
        let mut n = 0;
        let got = poll_until(
            Duration::from_secs(10),
            Duration::from_secs(1),
            async || {
                n += 1;
                (n == 3).then_some(n)
            },
        )
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out() {
        let err = poll_until(Duration::from_secs(3), Duration::from_secs(1), async || {
            None::<()>
        })
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 4);
        assert_eq!(err.waited, Duration::from_secs(3));
    }
}
