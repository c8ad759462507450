//! Raising the open-file limit: every simulated charger, and every relayed pair, holds sockets,
//! and the usual soft limit of 1024 would cap a run at about a thousand chargers.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Failure is logged, not fatal: a small run
/// works under any limit.
#[cfg(unix)]
pub fn raise() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which is valid and exclusively ours.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot read the open-file limit"
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        tracing::debug!(limit = ?limit.rlim_cur, "open-file limit already at its maximum");
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given, which is valid.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            soft = ?limit.rlim_cur,
            hard = ?limit.rlim_max,
            "cannot raise the open-file limit"
        );
        return;
    }
    tracing::debug!(from = ?limit.rlim_cur, to = ?limit.rlim_max, "open-file limit raised");
}

#[cfg(not(unix))]
pub fn raise() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        super::raise();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise`.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
