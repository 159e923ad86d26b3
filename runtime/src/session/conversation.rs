//! A conversation over a [`Session`]: messages rendered with a chat template, each turn's
//! prompt beginning with the earlier turns, so the prefix cache hands their KV blocks back and
//! only the new tokens are prefilled; and a [`ContextPolicy`] for when the history outgrows
//! the context.
//!
//! The conversation holds text, not KV: what is reused is whatever full blocks the engine's
//! prefix cache still holds for the rendered history (all of them in a session, whose arena
//! serves one sequence). A turn that fails leaves the conversation as it was.

use std::str::FromStr;

use super::{Generation, RequestParams, Session};
use crate::chat::{render_chat, ChatMessage};
use crate::engine::{encode_prompt, ContextShift};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What a [`Conversation`] does when its history, the new message and the room for the reply
/// (`max_tokens`) do not fit the context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContextPolicy {
    /// Refuse the turn with [`Error::ContextFull`]; the conversation is unchanged.
    Error,
    /// Drop the oldest whole turns (a user message and the reply to it; never the system
    /// message) until the prompt and `max_tokens` fit, and then until the prompt takes at most
    /// half the context (so the next turns append to the cached history rather than each
    /// prefilling it again; see [`fit_chat`]). When the system message and the new message
    /// alone leave less room than
    /// `max_tokens`, the reply gets the room there is (it ends with
    /// [`FinishReason::Length`](super::FinishReason::Length) if it fills it); when they leave
    /// none, the turn is refused with [`Error::PromptTooLong`].
    #[default]
    Truncate,
    /// Fit the prompt as [`ContextPolicy::Truncate`] does (a prompt must fit the context), but
    /// let the reply run past the end of the context with llama.cpp's context shift
    /// ([`ContextShift`](crate::engine::ContextShift)): the system prompt's tokens stay, half
    /// of the rest is dropped and the kept keys are rotated to their new positions, so
    /// `max_tokens` is not lowered to the room left.
    Shift,
}

impl FromStr for ContextPolicy {
    type Err = Error;

    /// `"error"`, `"truncate"` or `"shift"`.
    fn from_str(s: &str) -> Result<ContextPolicy> {
        match s {
            "error" => Ok(ContextPolicy::Error),
            "truncate" => Ok(ContextPolicy::Truncate),
            "shift" => Ok(ContextPolicy::Shift),
            _ => Err(Error::InvalidParam {
                name: "context_policy",
                what: format!("{s:?} (expected error, truncate or shift)"),
            }),
        }
    }
}

/// One turn's prompt, as [`Conversation::prompt`] builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnPrompt {
    /// The rendered history and new message, tokenized.
    pub ids: Vec<u32>,
    /// Earlier turns left out to make room (0 unless the policy is
    /// [`ContextPolicy::Truncate`]).
    pub dropped_turns: usize,
    /// The most tokens the reply may have: the caller's `max_tokens`, or the room left.
    pub max_tokens: usize,
}

/// What one [`Conversation::reply`] did.
#[derive(Debug)]
pub struct Turn {
    /// The reply (its text is now the conversation's last message).
    pub generation: Generation,
    /// This turn's prompt: the rendered history and new message, tokenized.
    pub prompt_ids: Vec<u32>,
    /// Tokens in this turn's prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not computed again).
    pub cached_tokens: usize,
    /// Earlier turns dropped to make room for this one.
    pub dropped_turns: usize,
}

/// A chat: an optional system message, then user messages and replies, rendered with one
/// template.
#[derive(Clone, Debug)]
pub struct Conversation {
    template: String,
    bos: String,
    eos: String,
    policy: ContextPolicy,
    /// The system message, if any, then alternating user and assistant messages.
    messages: Vec<ChatMessage>,
    n_system: usize,
}

impl Conversation {
    /// A conversation rendered with `template` (Hugging Face chat-template Jinja; `bos_token`
    /// and `eos_token` are the texts the template may use), starting with `system` if given.
    pub fn new(
        template: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
        system: Option<&str>,
        policy: ContextPolicy,
    ) -> Conversation {
        let messages: Vec<ChatMessage> = system
            .map(|s| ChatMessage::new("system", s))
            .into_iter()
            .collect();
        Conversation {
            template: template.into(),
            bos: bos_token.into(),
            eos: eos_token.into(),
            policy,
            n_system: messages.len(),
            messages,
        }
    }

    /// [`Conversation::new`] with the BOS and EOS texts of `tokenizer`.
    pub fn for_tokenizer(
        template: impl Into<String>,
        tokenizer: &Tokenizer,
        system: Option<&str>,
        policy: ContextPolicy,
    ) -> Conversation {
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        Self::new(
            template,
            text(tokenizer.bos()),
            text(tokenizer.eos()),
            system,
            policy,
        )
    }

    /// The messages the next turn starts from: the system message, if any, then the turns
    /// kept so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The policy for a history that outgrows the context.
    pub fn policy(&self) -> ContextPolicy {
        self.policy
    }

    /// The prompt for a turn that says `user`, for a context of `n_ctx` tokens and a reply of
    /// up to `max_tokens`, under the conversation's policy. Changes nothing: the turns it
    /// leaves out are dropped only when [`Conversation::commit`] records the reply.
    pub fn prompt(
        &self,
        tokenizer: &Tokenizer,
        n_ctx: usize,
        max_tokens: usize,
        user: &str,
    ) -> Result<TurnPrompt> {
        let messages: Vec<ChatMessage> = self
            .messages
            .iter()
            .cloned()
            .chain([ChatMessage::new("user", user)])
            .collect();
        let chat = ChatFormat {
            template: &self.template,
            bos_token: &self.bos,
            eos_token: &self.eos,
        };
        let p = fit_chat(&chat, &messages, tokenizer, n_ctx, max_tokens, self.policy)?;
        // Turns alternate user, assistant after the system message: the cut is at a user
        // message, two messages per turn.
        Ok(TurnPrompt {
            ids: p.ids,
            dropped_turns: p.dropped_messages / 2,
            max_tokens: p.max_tokens,
        })
    }

    /// Tokens of the rendered system message (what a context shift keeps): the prompt of a
    /// chat of the system message alone, without the generation prompt. 0 without one.
    fn system_tokens(&self, tokenizer: &Tokenizer) -> Result<usize> {
        if self.n_system == 0 {
            return Ok(0);
        }
        let text = render_chat(
            &self.template,
            &self.messages[..self.n_system],
            false,
            &self.bos,
            &self.eos,
        )
        .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        tokenizer
            .encode(&text, true, true)
            .map(|ids| ids.len())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Record a finished turn: drop the `dropped_turns` oldest turns (as its
    /// [`TurnPrompt`] said), then append `user` and `reply`.
    pub fn commit(&mut self, dropped_turns: usize, user: &str, reply: &str) {
        let from = self.n_system;
        let to = (from + 2 * dropped_turns).min(self.messages.len());
        self.messages.drain(from..to);
        self.messages.push(ChatMessage::new("user", user));
        self.messages.push(ChatMessage::new("assistant", reply));
    }

    /// One turn: build the prompt for `user` ([`Conversation::prompt`]), generate the reply in
    /// `session` with `params` (its `max_tokens` lowered to the room left, if the policy gave
    /// less), streaming its text to `on_piece` (return false to stop: the turn then ends with
    /// [`FinishReason::Cancelled`](super::FinishReason::Cancelled) and what was generated is
    /// kept as the reply), and record the turn. Prefix caching is turned on in `session`, so
    /// the earlier turns' KV blocks are reused. On error nothing is recorded.
    pub fn reply(
        &mut self,
        session: &mut Session,
        user: &str,
        params: &RequestParams,
        on_piece: impl FnMut(&str) -> bool,
    ) -> Result<Turn> {
        session.set_prefix_caching(true);
        let p = self.prompt(
            session.tokenizer(),
            session.n_ctx(),
            params.max_tokens,
            user,
        )?;
        let params = RequestParams {
            max_tokens: p.max_tokens,
            context_shift: match self.policy {
                ContextPolicy::Shift => Some(ContextShift {
                    keep: self.system_tokens(session.tokenizer())?,
                }),
                _ => params.context_shift,
            },
            ..params.clone()
        };
        let generation = session.generate_until(&p.ids, &params, on_piece)?;
        self.commit(p.dropped_turns, user, &generation.text);
        Ok(Turn {
            prompt_tokens: p.ids.len(),
            cached_tokens: generation.n_cached,
            prompt_ids: p.ids,
            dropped_turns: p.dropped_turns,
            generation,
        })
    }
}

/// A chat template with the texts it may use for BOS and EOS.
#[derive(Clone, Copy, Debug)]
pub struct ChatFormat<'a> {
    /// Hugging Face chat-template Jinja.
    pub template: &'a str,
    /// The BOS token's text.
    pub bos_token: &'a str,
    /// The EOS token's text.
    pub eos_token: &'a str,
}

/// A chat rendered and tokenized to fit the context ([`fit_chat`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatPrompt {
    /// The prompt's tokens.
    pub ids: Vec<u32>,
    /// Messages left out, counted from the first message after the leading system messages.
    pub dropped_messages: usize,
    /// The most tokens the reply may have: the caller's `max_tokens`, or the room left.
    pub max_tokens: usize,
}

/// Render `messages` with `chat` (generation prompt added) and tokenize them (special tokens
/// parsed, BOS per the model) for a context of `n_ctx` tokens and a reply of up to
/// `max_tokens`, under `policy`.
///
/// [`ContextPolicy::Truncate`] leaves out whole turns from the front: the leading system
/// messages stay, the kept history begins at a user message, and the last message is always
/// kept. When it has to leave turns out, it leaves out enough for the prompt to take at most
/// half the context (as llama.cpp's context shift discards half), so that the next turns
/// reuse the kept turns' KV instead of each prefilling the whole history again. If even the
/// last turn alone leaves less room than `max_tokens`, the reply gets the room left
/// ([`ChatPrompt::max_tokens`]), and if it leaves none, the result is
/// [`Error::PromptTooLong`]. [`ContextPolicy::Error`] gives [`Error::ContextFull`] when the
/// whole chat and `max_tokens` do not fit. Also [`Error::ChatTemplate`] and
/// [`Error::Tokenizer`]; [`Error::InvalidParam`] for no messages.
///
/// [`ContextPolicy::Shift`] fits the prompt as `Truncate` does with room for the start of a
/// reply (`max_tokens`, at most a quarter of the context) and keeps `max_tokens` as asked:
/// the reply shifts the context when it reaches its end.
pub fn fit_chat(
    chat: &ChatFormat<'_>,
    messages: &[ChatMessage],
    tokenizer: &Tokenizer,
    n_ctx: usize,
    max_tokens: usize,
    policy: ContextPolicy,
) -> Result<ChatPrompt> {
    if messages.is_empty() {
        return Err(Error::InvalidParam {
            name: "messages",
            what: "the chat has no messages".into(),
        });
    }
    if policy == ContextPolicy::Shift {
        let room = max_tokens.min(n_ctx / 4).max(1);
        let truncate = ContextPolicy::Truncate;
        let p = fit_chat(chat, messages, tokenizer, n_ctx, room, truncate)?;
        return Ok(ChatPrompt { max_tokens, ..p });
    }
    let n_system = messages.iter().take_while(|m| m.role == "system").count();
    let last = messages.len() - 1;
    // Where the kept history may begin: right after the system messages, then at each later
    // user message, and at the last message.
    let mut cuts: Vec<usize> = vec![n_system.min(last)];
    cuts.extend((n_system + 1..last).filter(|&i| messages[i].role == "user"));
    if *cuts.last().unwrap_or(&0) < last {
        cuts.push(last);
    }
    // The first cut that fits, kept while truncation looks for a shorter one.
    let mut fitted: Option<ChatPrompt> = None;
    for (k, &cut) in cuts.iter().enumerate() {
        let kept: Vec<ChatMessage> = messages[..n_system.min(cut)]
            .iter()
            .chain(&messages[cut..])
            .cloned()
            .collect();
        let text = render_chat(chat.template, &kept, true, chat.bos_token, chat.eos_token)
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let dropped = cut - n_system.min(cut);
        // The prompt's tokens, or, when its bytes alone cannot fit, the fewest it needs.
        let (ids, n_prompt) = match encode_prompt(tokenizer, &text, n_ctx) {
            Ok(ids) => {
                let n = ids.len();
                (Some(ids), n)
            }
            Err(Error::ContextFull { requested, .. }) => (None, requested),
            Err(e) => return Err(e),
        };
        if n_prompt.saturating_add(max_tokens) <= n_ctx {
            let p = ChatPrompt {
                ids: ids.unwrap_or_default(),
                dropped_messages: dropped,
                max_tokens,
            };
            // Having to leave turns out, leave out enough for the prompt to fill at most half
            // the context: the turns that follow then append to what is cached, rather than
            // each leaving one more turn out and prefilling the whole history again.
            if k == 0 || n_prompt <= n_ctx / 2 {
                return Ok(p);
            }
            fitted = Some(p);
            continue;
        }
        if fitted.is_some() {
            break; // fewer messages rendered longer: keep the cut that fit
        }
        if policy == ContextPolicy::Error {
            return Err(Error::ContextFull {
                n_ctx,
                requested: n_prompt.saturating_add(max_tokens),
            });
        }
        if k + 1 < cuts.len() {
            continue;
        }
        // Only the system messages and the last turn are left: the reply gets the room there
        // is, if there is any.
        return match ids {
            Some(ids) if ids.len() < n_ctx => Ok(ChatPrompt {
                max_tokens: n_ctx - ids.len(),
                ids,
                dropped_messages: dropped,
            }),
            _ => Err(Error::PromptTooLong { n_prompt, n_ctx }),
        };
    }
    fitted.ok_or(Error::PromptTooLong { n_prompt: 0, n_ctx })
}

#[cfg(test)]
mod tests;
