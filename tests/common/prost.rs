//! `plex.Message` of `proto/plex.proto` as prost derives it, to check the hand-written codec
//! against (tests) and to measure it against (benches/proto.rs). Included by `#[path]`.

/// `message Message { int64 seq = 1; string uri = 2; string body = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProstMessage {
    #[prost(int64, tag = "1")]
    pub seq: i64,
    #[prost(string, tag = "2")]
    pub uri: String,
    #[prost(string, tag = "3")]
    pub body: String,
}
