//! Conversations on a small synthetic model (byte-level tokenizer: about one token per byte of
//! these messages) with a plain template, in a context of 96 tokens.

use super::*;
use crate::engine::KvBudget;
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::session::{FinishReason, SessionConfig};
use crate::synth::{synth_gguf, SynthSpec};

const TEMPLATE: &str = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
                        {% if add_generation_prompt %}assistant:{% endif %}";
const N_CTX: usize = 96;
const BLOCK: usize = 8;

fn session() -> Session {
    session_with_ctx(N_CTX)
}

fn session_with_ctx(n_ctx: usize) -> Session {
    let bytes = synth_gguf(&SynthSpec::default())
        .unwrap()
        .to_bytes()
        .unwrap();
    let model = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    let cfg = SessionConfig {
        n_ctx,
        kv_budget: KvBudget::FullContext,
        block_size: BLOCK,
        // Under 64: a pass of 64+ tokens takes the tiled attention path, whose rounding differs
        // (as llama.cpp's), and the fresh runs compared with cached turns must not.
        max_batch_tokens: 48,
        threads: 1,
        ..SessionConfig::default()
    };
    Session::new(model, &cfg).unwrap()
}

fn params(max_tokens: usize) -> RequestParams {
    RequestParams {
        max_tokens,
        ignore_eos: true,
        ..RequestParams::default()
    }
}

fn conversation(policy: ContextPolicy) -> Conversation {
    Conversation::new(TEMPLATE, "", "", Some("be brief"), policy)
}

/// Messages after the system message alternate user, assistant.
fn assert_alternates(c: &Conversation) {
    let roles: Vec<&str> = c.messages().iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles[0], "system");
    for pair in roles[1..].chunks(2) {
        assert_eq!(pair, ["user", "assistant"], "{roles:?}");
    }
}

/// Tokens `a` and `b` share from the start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A chat far longer than the context never fails under `Truncate`: the system message stays,
/// the oldest turns go first, every prompt leaves room for the reply, and a turn that drops
/// nothing takes the earlier turns' full blocks from the prefix cache.
#[test]
fn truncate_keeps_the_system_message_and_drops_the_oldest_turns() {
    let mut s = session();
    let mut c = conversation(ContextPolicy::Truncate);
    let mut dropped_any = false;
    let mut previous: Option<Vec<u32>> = None;
    for i in 0..10 {
        let user = format!("question {i}?");
        let p = c.prompt(s.tokenizer(), N_CTX, 12, &user).unwrap();
        assert!(p.ids.len() + p.max_tokens <= N_CTX);
        assert_eq!(p.max_tokens, 12);
        let turn = c.reply(&mut s, &user, &params(12), |_| true).unwrap();
        assert_eq!(turn.prompt_tokens, p.ids.len());
        assert_eq!(turn.dropped_turns, p.dropped_turns);
        assert_eq!(turn.generation.ids.len(), 12);
        if turn.dropped_turns == 0 {
            if let Some(prev) = &previous {
                // The previous turn's prompt is (nearly: the tokenizer may merge across its
                // end) a prefix of this one; its full blocks are reused.
                let want = common_prefix(prev, &p.ids) / BLOCK * BLOCK;
                assert!(
                    turn.cached_tokens >= want && turn.cached_tokens < p.ids.len(),
                    "turn {i}: {} of {} prompt tokens cached, want at least {want}",
                    turn.cached_tokens,
                    p.ids.len()
                );
            }
        }
        eprintln!(
            "turn {i}: {} prompt tokens, {} cached, {} turns dropped",
            turn.prompt_tokens, turn.cached_tokens, turn.dropped_turns
        );
        dropped_any |= turn.dropped_turns > 0;
        previous = Some(p.ids);
        assert_alternates(&c);
        let last = c.messages().last().unwrap();
        assert_eq!(last.content, turn.generation.text);
        assert_eq!(c.messages()[c.messages().len() - 2].content, user);
    }
    assert!(dropped_any, "ten turns of ~30 tokens must outgrow 96");
    assert_eq!(c.messages()[0], ChatMessage::new("system", "be brief"));
    // The kept turns are the latest ones, in order.
    let users: Vec<&str> = c.messages()[1..]
        .iter()
        .step_by(2)
        .map(|m| m.content.as_str())
        .collect();
    let n = users.len();
    let want: Vec<String> = (10 - n..10).map(|i| format!("question {i}?")).collect();
    assert_eq!(users, want);
}

/// Under `Error` the turn that would overflow is refused with `ContextFull`, and the
/// conversation is as it was: the next, shorter request still works.
#[test]
fn error_policy_refuses_and_changes_nothing() {
    let mut s = session();
    let mut c = conversation(ContextPolicy::Error);
    let err = loop {
        let before = c.messages().to_vec();
        match c.reply(&mut s, "and then?", &params(12), |_| true) {
            Ok(t) => assert_eq!(t.dropped_turns, 0),
            Err(e) => {
                assert_eq!(
                    c.messages(),
                    &before[..],
                    "a refused turn changed the history"
                );
                break e;
            }
        }
    };
    assert!(
        matches!(err, Error::ContextFull { n_ctx: N_CTX, requested } if requested > N_CTX),
        "{err}"
    );
}

/// A message that cannot fit even alone is `PromptTooLong` under `Truncate` and changes
/// nothing; when the system message and the new one leave less than `max_tokens`, the reply
/// gets the room there is and ends with `Length`.
#[test]
fn what_cannot_fit_is_refused_and_a_short_room_is_used() {
    let mut s = session();
    let mut c = conversation(ContextPolicy::Truncate);
    c.reply(&mut s, "hi", &params(8), |_| true).unwrap();
    let before = c.messages().to_vec();
    let huge = "x".repeat(4 * N_CTX);
    let err = c.reply(&mut s, &huge, &params(8), |_| true).unwrap_err();
    assert!(
        matches!(err, Error::PromptTooLong { n_ctx: N_CTX, .. }),
        "{err}"
    );
    assert_eq!(c.messages(), &before[..]);

    let long = "y".repeat(50);
    let p = c.prompt(s.tokenizer(), N_CTX, 50, &long).unwrap();
    assert_eq!(p.dropped_turns, 1, "the one earlier turn goes first");
    assert!(
        p.max_tokens < 50 && p.ids.len() + p.max_tokens == N_CTX,
        "{p:?}"
    );
    let turn = c.reply(&mut s, &long, &params(50), |_| true).unwrap();
    assert_eq!(turn.generation.ids.len(), p.max_tokens);
    assert_eq!(turn.generation.finish, Some(FinishReason::Length));
    assert_eq!(c.messages().len(), 3, "system, the long message, its reply");
}

#[test]
fn policies_parse_by_name() {
    assert_eq!(
        "error".parse::<ContextPolicy>().unwrap(),
        ContextPolicy::Error
    );
    assert_eq!(
        "truncate".parse::<ContextPolicy>().unwrap(),
        ContextPolicy::Truncate
    );
    assert_eq!(
        "shift".parse::<ContextPolicy>().unwrap(),
        ContextPolicy::Shift
    );
    let e = "rotate".parse::<ContextPolicy>().unwrap_err().to_string();
    assert!(e.contains("expected error, truncate or shift"), "{e}");
}

/// Forty turns in a context of 96 under `Shift`: every turn runs to its `max_tokens` (longer
/// than the room a prompt leaves), the replies that reach the end of the context shift it
/// (tokens dropped, counted), the system message stays, and the conversation goes on.
#[test]
fn forty_turns_with_shift_run_to_the_end() {
    let mut s = session();
    let mut c = conversation(ContextPolicy::Shift);
    let mut shifted = 0;
    for i in 0..40 {
        let turn = c
            .reply(&mut s, &format!("turn {i}"), &params(70), |_| true)
            .unwrap_or_else(|e| panic!("turn {i}: {e}"));
        let g = &turn.generation;
        assert_eq!(g.ids.len(), 70, "turn {i}: the reply runs to max_tokens");
        assert_eq!(g.finish, Some(FinishReason::Length));
        // 70 tokens after a prompt of at least 8 cannot fit 96 without a shift.
        if turn.prompt_tokens + 70 > N_CTX {
            assert!(
                g.shifted_tokens > 0,
                "turn {i}: {} prompt tokens",
                turn.prompt_tokens
            );
        }
        shifted += g.shifted_tokens;
        assert_eq!(c.messages()[0].content, "be brief");
        assert_alternates(&c);
    }
    assert!(shifted > 0);
    assert!(s.engine().metrics().context_shifts > 0);
}

/// `fit_chat` on a chat that does not alternate: the kept history begins at a user message,
/// both leading system messages stay, the prompt is exactly the kept messages rendered, and
/// truncation goes on until the prompt takes at most half the context; under `Error` the whole
/// chat is refused.
#[test]
fn fit_chat_cuts_at_user_messages() {
    let s = session();
    let m = ChatMessage::new;
    let long = "u".repeat(60);
    let chat = [
        m("system", "a"),
        m("system", "b"),
        m("user", &long),
        m("assistant", "x"),
        m("assistant", "y"),
        m("user", "v"),
        m("tool", "z"),
        m("user", "q"),
    ];
    let format = ChatFormat {
        template: TEMPLATE,
        bos_token: "",
        eos_token: "",
    };
    let tok = s.tokenizer();
    let fit = |n_ctx, policy| fit_chat(&format, &chat, tok, n_ctx, 8, policy);
    let rendered = |kept: &[ChatMessage]| {
        tok.encode(
            &render_chat(TEMPLATE, kept, true, "", "").unwrap(),
            true,
            true,
        )
        .unwrap()
    };
    let all = rendered(&chat);
    let from_v: Vec<ChatMessage> = chat[..2].iter().chain(&chat[5..]).cloned().collect();
    let from_q: Vec<ChatMessage> = chat[..2].iter().chain(&chat[7..]).cloned().collect();
    let (from_v, from_q) = (rendered(&from_v), rendered(&from_q));
    eprintln!("{} / {} / {} tokens", all.len(), from_v.len(), from_q.len());
    // 128: the whole chat does not fit; from the second user message on it does, in half.
    assert!(all.len() + 8 > 128 && from_v.len() <= 64);
    let p = fit(128, ContextPolicy::Truncate).unwrap();
    assert_eq!((p.dropped_messages, p.max_tokens), (3, 8));
    assert_eq!(p.ids, from_v);
    // 96: the same cut fits but takes more than half: the next user message is the cut.
    assert!(from_v.len() + 8 <= 96 && from_v.len() > 48);
    let p = fit(96, ContextPolicy::Truncate).unwrap();
    assert_eq!(p.dropped_messages, 5);
    assert_eq!(p.ids, from_q);

    let err = fit(128, ContextPolicy::Error).unwrap_err();
    assert!(
        matches!(err, Error::ContextFull { n_ctx: 128, requested } if requested == all.len() + 8),
        "{err}"
    );
    assert_eq!(fit(4096, ContextPolicy::Error).unwrap().ids, all);
    let none = fit_chat(&format, &[], tok, N_CTX, 8, ContextPolicy::Truncate).unwrap_err();
    assert!(matches!(none, Error::InvalidParam { .. }), "{none}");
}

/// Six scripted turns (a context big enough that nothing is dropped): every reply has exactly
/// the ids of generating from the whole history in a fresh session without the cache, and
/// each turn computes only its new tokens: at most what it does not share with the previous
/// turn's prompt and reply, plus the rest of a partly filled block.
#[test]
fn six_turns_equal_fresh_runs_and_prefill_only_new_tokens() {
    let mut s = session_with_ctx(256);
    let mut c = conversation(ContextPolicy::Error);
    let mut previous: Vec<u32> = Vec::new();
    for i in 0..6 {
        let user = format!("go {i}");
        let p = c.prompt(s.tokenizer(), 256, 6, &user).unwrap();
        let turn = c.reply(&mut s, &user, &params(6), |_| true).unwrap();
        assert_eq!(turn.dropped_turns, 0);
        let mut fresh = session_with_ctx(256);
        let want = fresh.generate(&p.ids, &params(6), |_| {}).unwrap();
        assert_eq!(turn.generation.ids, want.ids, "turn {i}");
        let computed = turn.prompt_tokens - turn.cached_tokens;
        let new = p.ids.len() - common_prefix(&previous, &p.ids);
        eprintln!(
            "turn {i}: {} prompt tokens, {computed} computed, {new} not in the previous sequence",
            turn.prompt_tokens
        );
        assert!(
            computed <= new + BLOCK,
            "turn {i}: computed {computed} prompt tokens, only {new} are new"
        );
        previous = p.ids.iter().chain(&turn.generation.ids).copied().collect();
    }
}
