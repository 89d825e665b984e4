//! The errors of jack-conversation and how each reaches a client.

use jack_proto::tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("clientMessageId was already used for a different message")]
    ClientMessageIdReused,
    #[error(transparent)]
    Storage(#[from] sqlx::Error),
    #[error("storage unavailable")]
    Unavailable,
    #[error("shutting down")]
    ShuttingDown,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<ConversationError> for Status {
    fn from(err: ConversationError) -> Self {
        match err {
            ConversationError::InvalidArgument(msg) => Status::invalid_argument(msg),
            ConversationError::ConversationNotFound => Status::not_found("conversation not found"),
            ConversationError::ClientMessageIdReused => {
                Status::already_exists("clientMessageId was already used for a different message")
            }
            ConversationError::Storage(cause) => {
                tracing::error!(error = %cause, "storage failed");
                Status::unavailable("storage unavailable")
            }
            ConversationError::Unavailable => Status::unavailable("storage unavailable"),
            ConversationError::ShuttingDown => Status::unavailable("shutting down"),
            ConversationError::Corrupt(cause) => {
                tracing::error!(%cause, "corrupt row");
                Status::internal("internal error")
            }
        }
    }
}
