//! TEMPORARY STUB (helper writing the real chat.rs will overwrite this file).
#![allow(missing_docs)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}
pub fn render_chat(
    _t: &str,
    _m: &[ChatMessage],
    _a: bool,
    _b: &str,
    _e: &str,
) -> Result<String, String> {
    Err("stub".into())
}
