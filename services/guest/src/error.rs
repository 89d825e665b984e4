//! The errors of jack-guest and how each reaches a client.

use jack_proto::tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("unknown hotel")]
    UnknownHotel,
    #[error("guest not found")]
    GuestNotFound,
    #[error("invalid visitor token")]
    InvalidToken,
    #[error("this identify would create a new visitor")]
    WouldCreate,
    #[error(transparent)]
    Storage(#[from] sqlx::Error),
}

impl From<GuestError> for Status {
    fn from(err: GuestError) -> Self {
        match err {
            GuestError::InvalidArgument(msg) => Status::invalid_argument(msg),
            GuestError::UnknownHotel => Status::not_found("unknown hotel"),
            GuestError::GuestNotFound => Status::not_found("guest not found"),
            GuestError::InvalidToken => Status::unauthenticated("invalid visitor token"),
            GuestError::WouldCreate => Status::failed_precondition("this identify would create a new visitor"),
            GuestError::Storage(cause) => {
                tracing::error!(error = %cause, "storage failed");
                Status::unavailable("storage unavailable")
            }
        }
    }
}
