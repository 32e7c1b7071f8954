//! The token check in front of every executor RPC.

use mexec_common::token::Token;
use tonic::{Request, Status};

/// A tonic interceptor: with a token configured, a request must carry it.
#[derive(Debug, Clone, Default)]
pub struct TokenCheck {
    token: Option<Token>,
}

impl TokenCheck {
    /// Checks requests against `token`; `None` admits every request.
    pub fn new(token: Option<Token>) -> Self {
        TokenCheck { token }
    }

    /// Admits or refuses one request.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.token {
            Some(token) if !token.admits(request.metadata()) => Err(Status::unauthenticated(
                "missing or wrong token: give the cluster's token with --token-file or MEXEC_TOKEN_FILE",
            )),
            _ => Ok(request),
        }
    }
}
