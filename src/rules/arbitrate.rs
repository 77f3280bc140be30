//! Outcome arbitration: what one fanned-out operation answers, and which replicas are at fault.
//!
//! The rule (ChironFS's, made deterministic): if every replica agrees, success or the same
//! errno, that is the answer and nobody is at fault; if some succeed, the call succeeds and the
//! others are taken out of service; if none succeeds, the errno of the first replica in priority
//! order is returned and nobody is taken out. A replica that did not answer before the deadline
//! is at fault whenever another replica did answer.

/// What one replica did with one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It succeeded with this value.
    Done(T),
    /// It failed with this errno.
    Failed(i32),
    /// It did not answer before the deadline.
    TimedOut,
}

/// Why a replica is blamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// It returned this errno while another replica succeeded.
    Errno(i32),
    /// It did not answer in time.
    TimedOut,
}

/// The arbitration's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict<T> {
    /// What the caller gets: the first success in priority order, or an errno.
    pub answer: Result<T, i32>,
    /// Replicas to take out of service, with the reason.
    pub at_fault: Vec<(usize, Fault)>,
}

/// Arbitrates `results`, given as (replica index, outcome) in priority order.
/// With no answer at all (every replica timed out, or no replica in service) it is EIO.
pub fn arbitrate<T>(results: Vec<(usize, Outcome<T>)>) -> Verdict<T> {
    let any_success = results.iter().any(|(_, o)| matches!(o, Outcome::Done(_)));
    let any_answer = results.iter().any(|(_, o)| !matches!(o, Outcome::TimedOut));
    let mut answer: Option<Result<T, i32>> = None;
    let mut at_fault = Vec::new();
    for (index, outcome) in results {
        match outcome {
            Outcome::Done(value) => {
                if !matches!(answer, Some(Ok(_))) {
                    answer = Some(Ok(value));
                }
            }
            Outcome::Failed(errno) => {
                if any_success {
                    at_fault.push((index, Fault::Errno(errno)));
                } else if answer.is_none() {
                    answer = Some(Err(errno));
                }
            }
            Outcome::TimedOut => {
                if any_answer {
                    at_fault.push((index, Fault::TimedOut));
                }
            }
        }
    }
    Verdict {
        answer: answer.unwrap_or(Err(libc::EIO)),
        at_fault,
    }
}

/// True for errnos that mean "this replica is broken" rather than "this is the answer":
/// a read-type call that gets one of these is retried on another replica. The same errnos
/// at the first look at a replica's directory mean its storage cannot be reached now: the
/// mount starts without it (any other error there is a mistake in the command line).
pub fn is_replica_fault(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO
            | libc::ENOTCONN
            | libc::ESTALE
            | libc::ETIMEDOUT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ECONNREFUSED
            | libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ENOLINK
            | libc::EREMOTEIO
            | libc::ENODEV
            | libc::ENXIO
            | libc::EBADF
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn all_succeed_nobody_at_fault() {
        let v = arbitrate(vec![(0, Done(1)), (1, Done(2))]);
        assert_eq!(v.answer, Ok(1));
        assert!(v.at_fault.is_empty());
    }

    #[test]
    fn all_agree_on_an_errno_nobody_at_fault() {
        let v = arbitrate::<()>(vec![(0, Failed(libc::ENOENT)), (1, Failed(libc::ENOENT))]);
        assert_eq!(v.answer, Err(libc::ENOENT));
        assert!(v.at_fault.is_empty());
    }

    #[test]
    fn some_fail_call_succeeds_and_failures_are_blamed() {
        let v = arbitrate(vec![(0, Failed(libc::EIO)), (1, Done(7)), (2, TimedOut)]);
        assert_eq!(v.answer, Ok(7));
        assert_eq!(
            v.at_fault,
            vec![(0, Fault::Errno(libc::EIO)), (2, Fault::TimedOut)]
        );
    }

    #[test]
    fn none_succeed_first_in_priority_order_wins_nobody_blamed() {
        let v = arbitrate::<()>(vec![(1, Failed(libc::ENOSPC)), (0, Failed(libc::EIO))]);
        assert_eq!(v.answer, Err(libc::ENOSPC));
        assert!(v.at_fault.is_empty());
        let v = arbitrate::<()>(vec![(0, Failed(libc::EIO)), (1, Failed(libc::ENOSPC))]);
        assert_eq!(v.answer, Err(libc::EIO));
    }

    #[test]
    fn a_hung_replica_is_blamed_when_the_others_answered_even_with_an_error() {
        let v = arbitrate::<()>(vec![(0, TimedOut), (1, Failed(libc::EEXIST))]);
        assert_eq!(v.answer, Err(libc::EEXIST));
        assert_eq!(v.at_fault, vec![(0, Fault::TimedOut)]);
    }

    #[test]
    fn nobody_answered_is_eio_and_nobody_blamed() {
        let v = arbitrate::<()>(vec![(0, TimedOut), (1, TimedOut)]);
        assert_eq!(v.answer, Err(libc::EIO));
        assert!(v.at_fault.is_empty());
        let v = arbitrate::<()>(vec![]);
        assert_eq!(v.answer, Err(libc::EIO));
    }

    #[test]
    fn fault_classification() {
        assert!(is_replica_fault(libc::EIO));
        assert!(is_replica_fault(libc::ENOTCONN));
        assert!(!is_replica_fault(libc::ENOENT));
        assert!(!is_replica_fault(libc::EACCES));
        assert!(!is_replica_fault(libc::ENOSPC));
    }
}
