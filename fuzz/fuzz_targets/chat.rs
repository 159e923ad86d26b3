//! Chat-template rendering with arbitrary messages.
//!
//! Templates: SmolLM2's (from its GGUF), the Gemma 3 template shipped in `tests/golden/`, a
//! Llama 3 style one and one that leans on the Python-compatibility helpers (`tojson`,
//! `strip`, `split`, `raise_exception`, ...). Messages, roles, BOS/EOS texts are arbitrary.
//!
//! Properties: `render_chat` returns `Ok` or a `ChatError` with a message (never a panic or a
//! hang); the output is bounded, linear in the input (each message and special text is
//! written a bounded number of times, `tojson` escaping at most six bytes per byte); every
//! message's content appears in the output of the SmolLM2 template verbatim.
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

#[derive(Arbitrary, Debug)]
struct Input {
    template: u8,
    messages: Vec<(String, String)>,
    add_generation_prompt: bool,
    bos: String,
    eos: String,
}

fuzz_target!(|inp: Input| {
    let template = TEMPLATES[inp.template as usize % TEMPLATES.len()];
    let msgs: Vec<ChatMessage> = inp
        .messages
        .iter()
        .take(32)
        .map(|(r, c)| ChatMessage::new(r.as_str(), c.as_str()))
        .collect();
    match render_chat(
        template,
        &msgs,
        inp.add_generation_prompt,
        &inp.bos,
        &inp.eos,
    ) {
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
