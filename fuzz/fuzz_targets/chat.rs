//! Chat-template rendering with arbitrary messages.
//!
//! Templates: SmolLM2's (from its GGUF), the Gemma 3 template shipped in `tests/golden/`, a
//! Llama 3 style one and one that leans on the Python-compatibility helpers (`tojson`,
//! `strip`, `split`, `raise_exception`, ...). Messages, roles, BOS/EOS texts are arbitrary.
//!
//! The template varies too: arbitrary text, or one assembled from fragments (loops, `set`,
//! `~`/`+`/`*` doubling, macros, captures, filters, deep nesting) that aim at the render
//! limits.
//!
//! Properties: `render_chat` returns `Ok` or a `ChatError` with a message (never a panic, an
//! abort or a hang); for the fixed templates the output is bounded, linear in the input (each
//! message and special text is written a bounded number of times, `tojson` escaping at most
//! six bytes per byte) and every message's content appears in the output of the SmolLM2
//! template verbatim; for any template the output is at most `MAX_OUTPUT_BYTES`.
#![no_main]

use arbitrary::Arbitrary;
use ember::chat::{render_chat, ChatMessage};
use libfuzzer_sys::fuzz_target;

const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' and not loop.first %}{{ raise_exception('the system message must come first') }}{% endif %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const HELPERS: &str = "{{ bos_token }}{% for m in messages %}{% if m.role.startswith('tool') %}{{ m | tojson }}{% elif m['content'].strip().isdigit() %}#{{ m.content.split(',') | length }}{% else %}{{ m.role.upper() ~ ': ' ~ m.content.replace('\n', ' ').lstrip() }}{% endif %}{% if m.content.endswith('!') %}{{ eos_token }}{% endif %}{% endfor %}{{ messages | tojson }}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

const TEMPLATES: [&str; 4] = [
    ember_fuzz::SMOLLM2_TEMPLATE,
    include_str!("../../tests/golden/gemma3/chat_template.jinja"),
    LLAMA3,
    HELPERS,
];

/// Pieces of hostile templates; `{}` in a fragment is replaced by the next fragment.
const FRAGMENTS: [&str; 20] = [
    "{% for i in range(100000) %}{}{% endfor %}",
    "{% set ns.s = ns.s ~ ns.s %}",
    "{% set ns.s = ns.s + ns.s %}",
    "{% set ns.s = ns.s * 3 %}",
    "{% set ns.v = [ns.v, ns.v] %}",
    "{% set ns.v = [[ns.v]] %}",
    "{{ ns.s }}",
    "{{ ns.v }}",
    "{% set ns.s = d(ns.s) %}",
    "{% set c %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = c %}",
    "{% filter upper %}{}{% endfilter %}",
    "{% set ns.s = ns.s | replace('a', 'aaaa') %}",
    "{% set ns.s = ns.s.replace('a', 'aaaa') %}",
    "{{ ns.v | tojson | length }}{{ ns.v == ns.v }}",
    "{{ ns.v | join(ns.s) | length }}",
    "{% if ns.s | length > 10 %}{}{% else %}{}{% endif %}",
    // Constants folded at compile time, alone and joined.
    "{{ ('a' * 99999999 ~ 'ab' * (10**7) * 10) | length }}",
    "{% set ns.s = ['a' * 10**7, 'b' * 10**7] ~ ns.s %}",
    // Builtins that print a list or map argument.
    "{{ ns.v | upper | length }}{{ ns.v | trim | length }}",
    "{{ ns.v | pprint | length }}{{ ns.v is startingwith('x') }}",
];

const PRELUDE: &str =
    "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='ab', v=[]) %}";

/// A template from `PRELUDE` and fragments chosen by `picks` (at most 32).
fn assemble(picks: &[u8]) -> String {
    let mut out = String::from(PRELUDE);
    let mut holes = 0usize;
    for &p in picks.iter().take(32) {
        let frag = FRAGMENTS[p as usize % FRAGMENTS.len()];
        if holes > 0 && out.contains("{}") {
            out = out.replacen("{}", frag, 1);
            holes -= 1;
        } else {
            out.push_str(frag);
        }
        holes += frag.matches("{}").count();
    }
    out.replace("{}", "")
}

#[derive(Arbitrary, Debug)]
enum TemplateChoice {
    Fixed(u8),
    Text(String),
    Fragments(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    template: TemplateChoice,
    messages: Vec<(String, String)>,
    add_generation_prompt: bool,
    bos: String,
    eos: String,
}

fuzz_target!(|inp: Input| {
    let template = match &inp.template {
        TemplateChoice::Fixed(i) => TEMPLATES[*i as usize % TEMPLATES.len()],
        TemplateChoice::Text(t) => return any_template(t, &inp),
        TemplateChoice::Fragments(p) => return any_template(&assemble(p), &inp),
    };
    let (msgs, rendered) = render(template, &inp, 32);
    match rendered {
        Ok(out) => {
            let msg_bytes: usize = msgs.iter().map(|m| m.role.len() + m.content.len()).sum();
            let fixed = template.len() + inp.bos.len() + inp.eos.len() + 64;
            let bound = fixed * (msgs.len() + 2) + 8 * msg_bytes;
            assert!(out.len() <= bound, "output {} > bound {bound}", out.len());
            if template == ember_fuzz::SMOLLM2_TEMPLATE {
                for m in &msgs {
                    assert!(out.contains(&m.content), "content dropped");
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

/// Render `template` with the input's first `take` messages; the messages and the result.
fn render(
    template: &str,
    inp: &Input,
    take: usize,
) -> (Vec<ChatMessage>, Result<String, ember::chat::ChatError>) {
    let msgs: Vec<ChatMessage> = inp
        .messages
        .iter()
        .take(take)
        .map(|(r, c)| ChatMessage::new(r.as_str(), c.as_str()))
        .collect();
    let r = render_chat(
        template,
        &msgs,
        inp.add_generation_prompt,
        &inp.bos,
        &inp.eos,
    );
    (msgs, r)
}

/// Any template: `Ok` within the output limit or an error with a message.
fn any_template(template: &str, inp: &Input) {
    match render(template, inp, 8).1 {
        Ok(out) => assert!(out.len() as u64 <= ember::chat::MAX_OUTPUT_BYTES),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
