//! The OpenAI request and response bodies of `ember serve`: `/v1/chat/completions` and
//! `/v1/completions` parsed into a prompt and the engine's [`RequestParams`], and the
//! completion objects and stream chunks written back.
//!
//! Fields: `model` (any string: the server has one model), `messages` / `prompt`,
//! `max_tokens` (`max_completion_tokens` for chat), `temperature`, `top_p`, `top_k`, `min_p`,
//! `repeat_penalty`, `seed`, `stop` (a string or up to [`MAX_STOP`] strings), `n`, `stream`,
//! `stream_options.include_usage`, `response_format` (`text`, `json_object`, `json_schema`)
//! and llama.cpp's extensions `grammar` (GBNF) and `ignore_eos`. `frequency_penalty` / `presence_penalty` other than 0,
//! `logprobs`, `echo`, `suffix`, `best_of` > 1 and `tools` are refused with a message naming
//! them (never silently ignored); other fields (`user`, `metadata`, ...) are ignored as
//! OpenAI's server ignores what it does not use.
//!
//! Defaults are Ember's (greedy unless `temperature` is given, then top-k 40, top-p 0.95,
//! min-p 0.05, as llama.cpp); `seed` absent means a random seed; `max_tokens` absent means up
//! to the end of the context.

use std::sync::Arc;

use ember::chat::ChatMessage;
use ember::engine::{FinishReason, RequestParams};
use ember::grammar::Grammar;
use ember::sampler::SamplingParams;
use ember::session::{fit_chat, ChatFormat, ContextPolicy};
use ember::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// Most stop strings in one request (OpenAI allows 4).
pub const MAX_STOP: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 1024;

/// A request the API cannot take: the message, and the offending parameter.
#[derive(Debug)]
pub struct Invalid {
    pub message: String,
    pub param: Option<&'static str>,
    /// OpenAI's `code` (e.g. `context_length_exceeded`).
    pub code: Option<&'static str>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        param: Some(param),
        code: None,
    }
}

/// Which endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Chat,
    Completion,
}

/// A parsed request, ready for the engine.
pub struct Parsed {
    pub prompt: Vec<u32>,
    pub params: RequestParams,
    pub stream: bool,
    pub include_usage: bool,
}

/// What the endpoints need of the model.
pub struct ModelInfo {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, if the model (or `--chat-template`) has one.
    pub template: Option<String>,
    pub bos_text: String,
    pub eos_text: String,
    pub n_ctx: usize,
    /// Speculative decoding for every request (`--draft-model`).
    pub speculative: Option<ember::engine::Speculative>,
    /// Context shift for every request (`--context-shift`, as llama-server's): only the
    /// prompt must fit the context; `max_tokens` may go past it.
    pub context_shift: Option<ember::engine::ContextShift>,
}

fn number(obj: &Map<String, Value>, k: &'static str) -> Result<Option<f64>, Invalid> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| invalid(k, format!("{k} must be a number"))),
    }
}

fn count(obj: &Map<String, Value>, k: &'static str) -> Result<Option<usize>, Invalid> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| invalid(k, format!("{k} must be a non-negative integer"))),
    }
}

fn flag(obj: &Map<String, Value>, k: &'static str) -> Result<bool, Invalid> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(k, format!("{k} must be true or false"))),
    }
}

/// Parse the body of a completion request for `kind`; `seed` is used when the body has none.
pub fn parse(body: &[u8], kind: Kind, model: &ModelInfo, seed: u64) -> Result<Parsed, Invalid> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        message: format!("the body is not valid JSON: {e}"),
        param: None,
        code: None,
    })?;
    let obj = v.as_object().ok_or_else(|| Invalid {
        message: "the body must be a JSON object".into(),
        param: None,
        code: None,
    })?;
    refuse_unsupported(obj, kind)?;
    if obj
        .get("model")
        .is_some_and(|m| !m.is_string() && !m.is_null())
    {
        return Err(invalid("model", "model must be a string"));
    }
    let max_tokens = match kind {
        Kind::Chat => match count(obj, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => count(obj, "max_tokens")?,
        },
        Kind::Completion => count(obj, "max_tokens")?,
    };
    if max_tokens == Some(0) {
        return Err(invalid("max_tokens", "max_tokens must be at least 1"));
    }
    let prompt = match kind {
        // Under a context shift the reply may outgrow the context: the messages need room for
        // its start only.
        Kind::Chat => {
            let reply = max_tokens.unwrap_or(1);
            let reply = match model.context_shift {
                Some(_) => reply.min(model.n_ctx / 4).max(1),
                None => reply,
            };
            chat_prompt(obj, model, reply)?
        }
        Kind::Completion => completion_prompt(obj, model)?,
    };
    let room = model.n_ctx.saturating_sub(prompt.len());
    let shifts = model.context_shift.is_some();
    if room == 0 || (!shifts && max_tokens.is_some_and(|m| m > room)) {
        return Err(Invalid {
            message: format!(
                "this model's context is {} tokens; the prompt has {} and max_tokens asks for {}",
                model.n_ctx,
                prompt.len(),
                max_tokens.unwrap_or(1)
            ),
            param: Some("max_tokens"),
            code: Some("context_length_exceeded"),
        });
    }
    let d = SamplingParams::default();
    let f32_or = |k: &'static str, dflt: f32| -> Result<f32, Invalid> {
        Ok(number(obj, k)?.map_or(dflt, |x| x as f32))
    };
    let sampling = SamplingParams {
        temperature: f32_or("temperature", d.temperature)?,
        top_k: count(obj, "top_k")?.unwrap_or(d.top_k),
        top_p: f32_or("top_p", d.top_p)?,
        min_p: f32_or("min_p", d.min_p)?,
        repeat_penalty: f32_or("repeat_penalty", d.repeat_penalty)?,
        repeat_last_n: d.repeat_last_n,
        seed: match obj.get("seed") {
            None | Some(Value::Null) => seed,
            // OpenAI seeds may be negative: any integer is taken (as its bit pattern).
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_i64().map(|x| x as u64))
                .ok_or_else(|| invalid("seed", "seed must be an integer"))?,
        },
    };
    sampling.validate().map_err(|e| Invalid {
        message: e.to_string(),
        param: None,
        code: None,
    })?;
    let stream_options = obj.get("stream_options").and_then(Value::as_object);
    Ok(Parsed {
        params: RequestParams {
            sampling,
            max_tokens: max_tokens.unwrap_or(room),
            stop: stops(obj)?,
            stop_ids: Vec::new(),
            n: count(obj, "n")?.unwrap_or(1),
            ignore_eos: flag(obj, "ignore_eos")?,
            grammar: grammar(obj)?,
            speculative: model.speculative,
            // `max_tokens` still defaults to the room left.
            context_shift: model.context_shift,
        },
        prompt,
        stream: flag(obj, "stream")?,
        include_usage: stream_options.is_some_and(|o| o.get("include_usage") == Some(&json!(true))),
    })
}

/// Fields Ember does not implement: refused by name when they ask for something.
fn refuse_unsupported(obj: &Map<String, Value>, kind: Kind) -> Result<(), Invalid> {
    for k in ["frequency_penalty", "presence_penalty"] {
        if number(obj, k)?.is_some_and(|x| x != 0.0) {
            return Err(invalid(
                k,
                format!("{k} is not supported (use repeat_penalty)"),
            ));
        }
    }
    let unsupported: &[&'static str] = match kind {
        Kind::Chat => &[
            "logprobs",
            "top_logprobs",
            "tools",
            "functions",
            "logit_bias",
        ],
        Kind::Completion => &["logprobs", "echo", "suffix", "logit_bias"],
    };
    for &k in unsupported {
        match obj.get(k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(_) => return Err(invalid(k, format!("{k} is not supported by Ember"))),
        }
    }
    if count(obj, "best_of")?.is_some_and(|b| b > 1) {
        return Err(invalid("best_of", "best_of is not supported (use n)"));
    }
    Ok(())
}

fn stops(obj: &Map<String, Value>) -> Result<Vec<String>, Invalid> {
    let list = crate::batch::stop_list(obj.get("stop")).map_err(|e| invalid("stop", e))?;
    if list.len() > MAX_STOP {
        return Err(invalid("stop", format!("at most {MAX_STOP} stop strings")));
    }
    if list
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(
            "stop",
            format!("stop strings must be 1..={MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(list)
}

fn grammar(obj: &Map<String, Value>) -> Result<Option<Arc<Grammar>>, Invalid> {
    let from_format = match obj.get("response_format") {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(
                Grammar::from_json_schema(r#"{"type": "object"}"#)
                    .map_err(|e| invalid("response_format", e.to_string()))?,
            ),
            Some("json_schema") => {
                let schema = f
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .ok_or_else(|| {
                        invalid(
                            "response_format",
                            "json_schema.schema (an object) is required",
                        )
                    })?;
                Some(
                    Grammar::from_json_schema(&schema.to_string())
                        .map_err(|e| invalid("response_format", format!("json_schema: {e}")))?,
                )
            }
            _ => {
                return Err(invalid(
                    "response_format",
                    "response_format.type must be text, json_object or json_schema",
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                "response_format",
                "response_format must be an object",
            ))
        }
    };
    let gbnf = match obj.get("grammar") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) => {
            Some(Grammar::parse(g).map_err(|e| invalid("grammar", format!("grammar: {e}")))?)
        }
        Some(_) => return Err(invalid("grammar", "grammar must be a string (GBNF)")),
    };
    match (from_format, gbnf) {
        (Some(_), Some(_)) => Err(invalid(
            "grammar",
            "give one of grammar and response_format",
        )),
        (g, None) | (None, g) => Ok(g.map(Arc::new)),
    }
}

/// The text of a message's `content`: a string, or an array of `{"type": "text", "text"}`
/// parts.
fn content(v: Option<&Value>) -> Result<String, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => return Err(invalid("messages", "only text content parts are supported")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(invalid(
            "messages",
            "content must be a string or an array of parts",
        )),
    }
}

fn chat_prompt(
    obj: &Map<String, Value>,
    model: &ModelInfo,
    max_tokens: usize,
) -> Result<Vec<u32>, Invalid> {
    let msgs = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(invalid("messages", "messages is empty")),
        _ => return Err(invalid("messages", "messages (an array) is required")),
    };
    let mut messages = Vec::with_capacity(msgs.len());
    for m in msgs {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("messages", "each message needs a role (a string)"))?;
        // OpenAI's newer name for the system role.
        let role = if role == "developer" { "system" } else { role };
        messages.push(ChatMessage::new(role, content(m.get("content"))?));
    }
    let template = model.template.as_deref().ok_or_else(|| Invalid {
        message: "this model has no chat template: use /v1/completions, or start the server \
                  with --chat-template FILE"
            .into(),
        param: None,
        code: None,
    })?;
    let chat = ChatFormat {
        template,
        bos_token: &model.bos_text,
        eos_token: &model.eos_text,
    };
    fit_chat(
        &chat,
        &messages,
        &model.tokenizer,
        model.n_ctx,
        max_tokens,
        ContextPolicy::Error,
    )
    .map(|p| p.ids)
    .map_err(|e| Invalid {
        code: matches!(
            e,
            ember::Error::ContextFull { .. } | ember::Error::PromptTooLong { .. }
        )
        .then_some("context_length_exceeded"),
        message: e.to_string(),
        param: Some("messages"),
    })
}

fn completion_prompt(obj: &Map<String, Value>, model: &ModelInfo) -> Result<Vec<u32>, Invalid> {
    let text = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            let n_vocab = model.tokenizer.vocab_size() as u64;
            return a
                .iter()
                .map(|t| {
                    t.as_u64()
                        .filter(|&t| t < n_vocab)
                        .map(|t| t as u32)
                        .ok_or_else(|| invalid("prompt", "a token id is outside the vocabulary"))
                })
                .collect();
        }
        Some(Value::Array(_)) => {
            return Err(invalid(
                "prompt",
                "prompt must be a string, one string in an array, or token ids",
            ))
        }
        _ => return Err(invalid("prompt", "prompt (a string) is required")),
    };
    // The bytes alone can show that it does not fit, before tokenizing it.
    let fewest = text.len().div_ceil(model.tokenizer.max_piece_len().max(1));
    if fewest > model.n_ctx {
        return Err(Invalid {
            message: format!(
                "the prompt needs at least {fewest} tokens; this model's context is {}",
                model.n_ctx
            ),
            param: Some("prompt"),
            code: Some("context_length_exceeded"),
        });
    }
    let ids = model
        .tokenizer
        .encode(&text, true, true)
        .map_err(|e| invalid("prompt", e.to_string()))?;
    if ids.is_empty() {
        return Err(invalid("prompt", "the prompt has no tokens"));
    }
    Ok(ids)
}

/// OpenAI's words for why a choice ended.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "error",
    }
}

/// The fields every response object of one request shares.
pub struct Head<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub kind: Kind,
}

impl Head<'_> {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// A whole response: one choice per `(text, finish_reason)`.
    pub fn response(&self, choices: &[(String, &str)], usage: Value) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, (text, finish))| match self.kind {
                Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": text},
                                     "logprobs": null, "finish_reason": finish}),
                Kind::Completion => {
                    json!({"index": i, "text": text, "logprobs": null, "finish_reason": finish})
                }
            })
            .collect();
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": choices, "usage": usage})
    }

    /// A stream chunk for choice `index`: new text (with the role in a chat's first chunk) or
    /// the finish reason.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        first: bool,
        finish: Option<&str>,
    ) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => json!({"index": index, "text": text.unwrap_or(""),
                                       "logprobs": null, "finish_reason": finish}),
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    /// The last chunk of a stream with `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [], "usage": usage})
    }
}

/// The `usage` object.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// An OpenAI-style error body.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember::gguf::{tokenizer_from_gguf, GgufFile};
    use ember::synth::{synth_gguf, SynthSpec};
    use proptest::prelude::*;

    const TEMPLATE: &str = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}\
                            {% if add_generation_prompt %}<assistant>{% endif %}";

    fn info() -> ModelInfo {
        static INFO: std::sync::OnceLock<Arc<Tokenizer>> = std::sync::OnceLock::new();
        let tok = INFO.get_or_init(|| {
            let bytes = synth_gguf(&SynthSpec::default())
                .unwrap()
                .to_bytes()
                .unwrap();
            Arc::new(tokenizer_from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap())
        });
        ModelInfo {
            name: "t".into(),
            tokenizer: Arc::clone(tok),
            template: Some(TEMPLATE.into()),
            bos_text: String::new(),
            eos_text: String::new(),
            n_ctx: 64,
            speculative: None,
            context_shift: None,
        }
    }

    fn ok(body: Value, kind: Kind) -> Parsed {
        match parse(body.to_string().as_bytes(), kind, &info(), 5) {
            Ok(p) => p,
            Err(e) => panic!("{body}: {e:?}"),
        }
    }

    fn err(body: &[u8], kind: Kind) -> Invalid {
        match parse(body, kind, &info(), 5) {
            Ok(_) => panic!("accepted {}", String::from_utf8_lossy(body)),
            Err(e) => e,
        }
    }

    #[test]
    fn requests_become_engine_parameters() {
        let p = ok(json!({"prompt": "a b", "stop": "x"}), Kind::Completion);
        assert!(!p.prompt.is_empty() && !p.stream && p.params.n == 1);
        assert_eq!(
            p.params.max_tokens,
            64 - p.prompt.len(),
            "up to the end of the context"
        );
        assert_eq!(
            (p.params.sampling.temperature, p.params.sampling.seed),
            (0.0, 5)
        );
        assert_eq!(p.params.stop, ["x"]);
        let p = ok(
            json!({"prompt": [3, 4], "max_tokens": 5, "temperature": 0.7, "seed": -1, "n": 2,
                   "stream": true, "stream_options": {"include_usage": true},
                   "response_format": {"type": "json_object"}, "ignore_eos": true}),
            Kind::Completion,
        );
        assert_eq!(p.prompt, [3, 4]);
        assert_eq!(
            (p.params.max_tokens, p.params.n, p.params.sampling.seed),
            (5, 2, u64::MAX)
        );
        assert!(p.stream && p.include_usage && p.params.grammar.is_some() && p.params.ignore_eos);
        let chat = json!({"messages": [{"role": "developer", "content": "be brief"},
                                       {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                          "max_completion_tokens": 3, "grammar": "root ::= \"yes\""});
        let p = ok(chat, Kind::Chat);
        assert_eq!(p.params.max_tokens, 3);
        assert!(p.params.grammar.is_some());
        let text = info().tokenizer.decode(&p.prompt);
        assert!(
            text.contains("<system>be brief") && text.ends_with("<assistant>"),
            "{text}"
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases: &[(&[u8], Kind, Option<&str>)] = &[
            (b"{\"prompt\": ", Kind::Completion, None),
            (b"[1]", Kind::Completion, None),
            (b"{}", Kind::Completion, Some("prompt")),
            (b"{\"prompt\": 3}", Kind::Completion, Some("prompt")),
            (b"{\"prompt\": [999999]}", Kind::Completion, Some("prompt")),
            (
                b"{\"prompt\": \"a\", \"max_tokens\": 0}",
                Kind::Completion,
                Some("max_tokens"),
            ),
            (
                b"{\"prompt\": \"a\", \"max_tokens\": -3}",
                Kind::Completion,
                Some("max_tokens"),
            ),
            (
                b"{\"prompt\": \"a\", \"temperature\": \"hot\"}",
                Kind::Completion,
                Some("temperature"),
            ),
            (
                b"{\"prompt\": \"a\", \"stop\": [1]}",
                Kind::Completion,
                Some("stop"),
            ),
            (
                b"{\"prompt\": \"a\", \"stop\": \"\"}",
                Kind::Completion,
                Some("stop"),
            ),
            (
                b"{\"prompt\": \"a\", \"logprobs\": 2}",
                Kind::Completion,
                Some("logprobs"),
            ),
            (
                b"{\"prompt\": \"a\", \"best_of\": 3}",
                Kind::Completion,
                Some("best_of"),
            ),
            (
                b"{\"prompt\": \"a\", \"presence_penalty\": 0.5}",
                Kind::Completion,
                Some("presence_penalty"),
            ),
            (
                b"{\"prompt\": \"a\", \"grammar\": \"root ::= [\"}",
                Kind::Completion,
                Some("grammar"),
            ),
            (
                b"{\"prompt\": \"a\", \"response_format\": {\"type\": \"yaml\"}}",
                Kind::Completion,
                Some("response_format"),
            ),
            (
                b"{\"prompt\": \"a\", \"stream\": \"yes\"}",
                Kind::Completion,
                Some("stream"),
            ),
            (b"{\"messages\": []}", Kind::Chat, Some("messages")),
            (
                b"{\"messages\": [{\"content\": \"x\"}]}",
                Kind::Chat,
                Some("messages"),
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
                Kind::Chat,
                Some("messages"),
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}",
                Kind::Chat,
                Some("tools"),
            ),
        ];
        for &(body, kind, param) in cases {
            let e = err(body, kind);
            assert_eq!(e.param, param, "{}: {e:?}", String::from_utf8_lossy(body));
        }
        let e = err(br#"{"prompt": "a", "temperature": -1}"#, Kind::Completion);
        assert!(e.message.contains("temperature"), "{e:?}");
        // Beyond the context: OpenAI's code.
        let e = err(br#"{"prompt": "a", "max_tokens": 100}"#, Kind::Completion);
        assert_eq!(e.code, Some("context_length_exceeded"));
        let long = json!({"messages": [{"role": "user", "content": "word ".repeat(200)}]});
        let e = err(long.to_string().as_bytes(), Kind::Chat);
        assert_eq!(e.code, Some("context_length_exceeded"), "{e:?}");
        // No template: chat is refused, completions still work.
        let mut m = info();
        m.template = None;
        let body = br#"{"messages": [{"role": "user", "content": "x"}]}"#;
        assert!(parse(body, Kind::Chat, &m, 0).is_err());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
            "[a-z <|>]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::vec((proptest::sample::select(FIELD_NAMES), inner), 0..6)
                    .prop_map(|kv| Value::Object(
                        kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )),
            ]
        })
    }

    const FIELD_NAMES: &[&str] = &[
        "prompt",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "n",
        "stream",
        "response_format",
        "json_schema",
        "schema",
        "grammar",
        "logprobs",
        "stream_options",
        "include_usage",
    ];

    proptest! {
        /// Any JSON of the API's field names: a request or an error, never a panic.
        #[test]
        fn any_json_never_panics(fields in proptest::collection::vec((proptest::sample::select(FIELD_NAMES), value()), 0..8)) {
            let body = Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            for kind in [Kind::Chat, Kind::Completion] {
                if let Ok(p) = parse(body.to_string().as_bytes(), kind, &info(), 0) {
                    prop_assert!(p.prompt.len() + p.params.max_tokens <= 64);
                }
            }
        }
    }
}
