//! Helpers on the error codes declared in `common.proto` ([`ErrorCode`]).

use crate::pb::{Error, ErrorCode};

impl ErrorCode {
    /// Whether the same request may succeed later without change: the refusal came from load,
    /// rate or a transient state, not from the request itself.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Internal
                | ErrorCode::RequestTimeout
                | ErrorCode::StoreUnavailable
                | ErrorCode::StoreConflict
                | ErrorCode::DestinationOffline
                | ErrorCode::Overloaded
                | ErrorCode::Unreachable
                | ErrorCode::RateLimited
                | ErrorCode::Draining
                | ErrorCode::TranslationFailed
                | ErrorCode::HoldTimerExpired
                | ErrorCode::SendHoldTimerExpired
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.as_str_name(), self.meaning())
    }
}

impl Error {
    /// A refusal with `code` and a detail for humans.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Error {
            code: code as i32,
            detail: detail.into(),
            retry_after_ms: 0,
        }
    }

    /// The code, `Malformed` when the peer sent a value this build does not know.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Malformed)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error_code())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if self.retry_after_ms > 0 {
            write!(f, " (retry after {} ms)", self.retry_after_ms)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
