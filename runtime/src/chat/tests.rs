//! Tests of chat-template rendering and its limits.

use super::*;

/// SmolLM2-135M-Instruct's `tokenizer.chat_template`, read from the GGUF.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn smollm2_system_and_user() {
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi there!"),
    ];
    let out = render_chat(SMOLLM2, &msgs, true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_default_system_prompt_and_no_generation_prompt() {
    let msgs = [ChatMessage::new("user", "Hi")];
    let out = render_chat(SMOLLM2, &msgs, false, "", "").unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn errors_are_clear() {
    let err = render_chat("{% for m in messages %}", &[], false, "", "").unwrap_err();
    assert!(matches!(err, ChatError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("syntax error"), "{err}");

    let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}";
    let err = render_chat(t, &[ChatMessage::new("system", "x")], false, "", "").unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }));
    assert!(
        err.to_string()
            .contains("Conversation must start with user"),
        "{err}"
    );
}

#[test]
fn python_compat_helpers() {
    let t = "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}|{{ m['role'].startswith('us') }}|{{ m.content.split(',') | length }}{% endfor %}{{ {'a': 1, 'b': [true, none, 'x\"y']} | tojson }}{{ eos_token }}";
    let out = render_chat(
        t,
        &[ChatMessage::new("user", "  a,b  ")],
        false,
        "<s>",
        "</s>",
    )
    .unwrap();
    assert_eq!(
        out,
        "<s>A,B|True|2{\"a\": 1, \"b\": [true, null, \"x\\\"y\"]}</s>"
    );
    assert_eq!(
        render_chat(
            "{{ {'k': 'v'}.items() | list | length }}{{ {'k': 'v'}.get('z', 'd') }}",
            &[],
            false,
            "",
            ""
        )
        .unwrap(),
        "1d"
    );
    let date = render_chat("{{ strftime_now('%Y-%m-%d') }}", &[], false, "", "").unwrap();
    assert_eq!(date.len(), 10);
}

/// Renders `t` with no messages and returns the limit error (the test fails on anything
/// else), checking that it names `limit`. The time it took is printed (`--nocapture`), not
/// asserted: speed is for benchmarks, and the limit error itself shows the work was cut off.
fn limit_hit(t: &str, limit: &str) -> String {
    let t0 = std::time::Instant::now();
    let r = render_chat(t, &[ChatMessage::new("user", "hi")], true, "", "");
    let dt = t0.elapsed();
    let err = match r {
        Err(e @ ChatError::Limit { .. }) => e.to_string(),
        other => panic!(
            "{t}: expected a limit error, got {:?}",
            other.map(|s| s.len())
        ),
    };
    assert!(err.contains(limit), "{t}: {err}");
    eprintln!("{:>8.1} ms  {err}", dt.as_secs_f64() * 1e3);
    err
}

const NS: &str = "{% set ns = namespace(v=[], s='ab') %}";

#[test]
fn deep_nesting_printed_compared_dropped() {
    // Printing refuses values nested past MAX_PRINT_DEPTH; the loop runs out of fuel
    // first for the larger counts, and the deep value is then dropped on the render thread.
    let deep = format!("{NS}{{% for i in range(100000) %}}{{% set ns.v = [ns.v] %}}{{% endfor %}}");
    limit_hit(&format!("{deep}{{{{ ns.v }}}}"), "levels of nesting");
    let cmp = render_chat(
        &format!("{deep}{{{{ ns.v == [ns.v] }}}}"),
        &[],
        false,
        "",
        "",
    );
    assert_eq!(cmp, Ok("False".to_string()));
    let d2000 = format!("{NS}{{% for i in range(2000) %}}{{% set ns.v = [ns.v] %}}{{% endfor %}}");
    limit_hit(&format!("{d2000}{{{{ ns.v }}}}"), "levels of nesting");
    limit_hit(&format!("{d2000}{{{{ ns.v ~ 'x' }}}}"), "levels of nesting");
    limit_hit(
        &format!("{d2000}{{{{ ns.v | string }}}}"),
        "levels of nesting",
    );
    // Nested namespaces and dicts.
    let t = "{% set ns = namespace(v=none) %}{% for i in range(100000) %}{% set ns.v = namespace(v=ns.v) %}{% endfor %}{{ ns.v }}";
    limit_hit(t, "levels of nesting");
    let t = "{% set ns = namespace(v={}) %}{% for i in range(100000) %}{% set ns.v = {'k': ns.v} %}{% endfor %}{{ ns.v == {'k': ns.v} }}";
    assert_eq!(render_chat(t, &[], false, "", ""), Ok("False".to_string()));
}

#[test]
fn deepest_fuel_allows_is_compared_and_dropped() {
    // 40 levels a statement (the parser limits nesting) build the deepest value the fuel
    // allows; two of them are compared, then dropped, on the render thread's stack.
    let mut wrap = String::from("ns.a");
    let mut wrap_b = String::from("ns.b");
    for _ in 0..40 {
        wrap = format!("[{wrap}]");
        wrap_b = format!("[{wrap_b}]");
    }
    let iters = FUEL / 100;
    let t = format!(
        "{{% set ns = namespace(a=[], b=[]) %}}{{% for i in range({}) %}}{{% for j in range(100) %}}{{% set ns.a = {wrap} %}}{{% set ns.b = {wrap_b} %}}{{% endfor %}}{{% endfor %}}{{{{ ns.a == ns.b }}}}{{{{ ns.a < ns.b }}}}",
        iters / 100
    );
    let r = render_chat(&t, &[], false, "", "");
    assert!(matches!(r, Ok(_) | Err(ChatError::Limit { .. })), "{r:?}");
    eprintln!("{:?}", r.map(|s| s.len()));
    // And one that runs out of fuel while nesting.
    let t = format!(
        "{{% set ns = namespace(a=[], b=[]) %}}{{% for i in range(100000) %}}{{% for j in range(100) %}}{{% set ns.a = {wrap} %}}{{% endfor %}}{{% endfor %}}"
    );
    limit_hit(&t, "work limit");
}

#[test]
fn doubling_hits_a_limit() {
    let lp = "{% for i in range(100) %}";
    for t in [
        format!("{NS}{lp}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}{{{{ ns.s }}}}"),
        format!("{NS}{lp}{{% set ns.s = ns.s + ns.s %}}{{% endfor %}}{{{{ ns.s }}}}"),
        format!("{NS}{lp}{{% set ns.s = ns.s * 2 %}}{{% endfor %}}{{{{ ns.s }}}}"),
        format!("{NS}{lp}{{% set ns.s = 2 * ns.s %}}{{% endfor %}}"),
        format!("{NS}{lp}{{% set ns.v = ns.v + ns.v + [1] %}}{{% endfor %}}{{{{ ns.v | list | length }}}}"),
        format!("{NS}{{{{ ([1] * 1000000000000) | list | length }}}}"),
        format!("{NS}{{{{ 'ab' * 1000000000000 }}}}"),
        format!("{{% set s = 'ab' %}}{}{{{{ s }}}}", "{% set s = s ~ s %}".repeat(40)),
        format!("{{% set s = 'ab' %}}{}{{{{ s }}}}", "{% set s = s + s %}".repeat(40)),
    ] {
        let err = limit_hit(&t, "limit");
        assert!(err.contains("memory limit") || err.contains("output limit"), "{t}: {err}");
    }
}

#[test]
fn captures_hit_the_output_limit() {
    let mac = "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}";
    limit_hit(
        &format!("{mac}{NS}{{% for i in range(100) %}}{{% set ns.s = d(ns.s) %}}{{% endfor %}}"),
        "output limit (4 MiB)",
    );
    limit_hit(
        &format!("{NS}{{% for i in range(100) %}}{{% set c %}}{{{{ ns.s }}}}{{{{ ns.s }}}}{{% endset %}}{{% set ns.s = c %}}{{% endfor %}}"),
        "output limit (4 MiB)",
    );
    limit_hit(
        &format!("{NS}{{% for i in range(100) %}}{{% filter upper %}}{{{{ ns.s }}}}{{{{ ns.s }}}}{{% endfilter %}}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}"),
        "limit",
    );
    // Plain output: a long loop of text.
    limit_hit(
        &format!(
            "{{% for i in range(100000) %}}{}{{% endfor %}}",
            "0123456789".repeat(100)
        ),
        "output limit (4 MiB)",
    );
}

#[test]
fn one_call_bombs_hit_a_limit() {
    let big = "{% set ns = namespace(s='a' * 1000000) %}";
    for t in [
        format!("{big}{{{{ ns.s | replace('a', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa') | length }}}}"),
        format!("{big}{{{{ ns.s.replace('a', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa') | length }}}}"),
        format!("{NS}{{% for i in range(40) %}}{{% set ns.s = ns.s.replace('a', 'aaaa') %}}{{% endfor %}}"),
        format!("{NS}{{% for i in range(40) %}}{{% set ns.s = ns.s | replace('a', 'aaaa') %}}{{% endfor %}}"),
        format!("{big}{{{{ range(100000) | join(ns.s) | length }}}}"),
        format!("{big}{{{{ ns.s.join(range(100000)) | length }}}}"),
        "{% set ns = namespace(s='a\\n' * 1000000) %}{{ ns.s | indent(100) | length }}".to_string(),
        "{{ 'a\n' * 100000 | indent(width=1000000000000) | length }}".to_string(),
        "{{ '%1000000000000s' | format('x') | length }}".to_string(),
        "{{ [1] | batch(1000000000000, 0) | list | length }}".to_string(),
        "{{ [1] | slice(1000000000000, 0) | list | length }}".to_string(),
        format!("{NS}{{% for i in range(30) %}}{{% set ns.v = [ns.v, ns.v] %}}{{% endfor %}}{{{{ ns.v | tojson | length }}}}"),
        format!("{NS}{{% for i in range(30) %}}{{% set ns.v = [ns.v, ns.v] %}}{{% endfor %}}{{{{ ns.v | join(',') | length }}}}"),
        format!("{NS}{{% for i in range(30) %}}{{% set ns.v = [ns.v, ns.v] %}}{{% endfor %}}{{{{ ns.v }}}}"),
    ] {
        let err = limit_hit(&t, "limit");
        assert!(!err.contains("work limit"), "{t}: {err}");
    }
    // `center` is not a builtin here (minijinja-contrib has it): a clear error, no work.
    let err = render_chat("{{ 'a' | center(1000000000000) }}", &[], false, "", "").unwrap_err();
    assert!(err.to_string().contains("center"), "{err}");
}

#[test]
fn nested_loops_run_out_of_fuel() {
    limit_hit(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
        "work limit (fuel 2000000 instructions)",
    );
}

#[test]
fn reserved_names_are_refused() {
    let err = render_chat(
        "{{ 1 }}\n{% macro __ember_emit(x) %}{% endmacro %}",
        &[],
        false,
        "",
        "",
    )
    .unwrap_err();
    assert!(
        matches!(err, ChatError::Syntax { line: Some(2), .. }),
        "{err}"
    );
    assert!(err.to_string().contains("__ember_"), "{err}");
}

#[test]
fn control_flow_survives_the_rewrite() {
    let t = "{% macro m(x, y=2) %}<{{ x ~ y }}>{% endmacro %}{% for i in range(4) if i != 1 %}{{ loop.index }}{{ m(i) }}{% if i > 2 and not false or none %}!{% else %}?{% endif %}{% endfor %}{% set c %}{{ 'x' * 3 }}{% endset %}{{ c | upper }}{{ [1, 2] + [3] }}{{ 1 + 2 * 3 }}{{ 'a' + 'b' }}{{ m('q') if true else 'no' }}{% filter lower %}AB{% endfilter %}{{ ('%s-%d' | format('a', 3)) }}{{ ['a', 'b'] | join('/') }}{{ 'a\nb' | indent(2, true) }}{{ 'abca' | replace('a', 'x') }}";
    let out = render_chat(t, &[], false, "", "").unwrap();
    assert_eq!(
        out,
        "1<02>?2<22>?3<32>!XXX[1, 2, 3]7ab<q2>aba-3a/b  a\n  bxbcx"
    );
}

/// Fuel the real templates use, printed for the record (`-- --nocapture`).
#[test]
fn fuel_of_real_templates() {
    let gemma = include_str!("../../../tests/golden/gemma3/chat_template.jinja");
    for (name, t) in [("SmolLM2", SMOLLM2), ("Gemma 3", gemma)] {
        for n in [2usize, 100, 1000] {
            let msgs: Vec<ChatMessage> = (0..n)
                .map(|i| {
                    let role = if i % 2 == 0 { "user" } else { "assistant" };
                    ChatMessage::new(role, format!("message number {i}"))
                })
                .collect();
            let (_, fuel) = render_here(t, &msgs, true, "<bos>", "<eos>").unwrap();
            eprintln!("{name}: {n} messages use {fuel} fuel");
            assert!(fuel * 20 <= FUEL, "{name} {n}: {fuel}");
        }
    }
}

#[test]
fn civil_dates() {
    assert_eq!(
        format_time(0, "%Y-%m-%d %H:%M:%S %a %j"),
        "1970-01-01 00:00:00 Thu 001"
    );
    // 2024-02-29 12:34:56 UTC, a leap day.
    assert_eq!(
        format_time(1_709_210_096, "%d %B %Y %I %p %A %j"),
        "29 February 2024 12 PM Thursday 060"
    );
}

#[test]
fn folded_constants_are_bounded_before_compiling() {
    let big = "('a' * 99999999)";
    for t in [
        format!("{{{{ {big} | length }}}}"),
        format!("{{{{ ({}) | length }}}}", [big; 100].join(" ~ ")),
        format!("{{{{ ({}) | length }}}}", [big; 100].join(" + ")),
        "{{ ('ab' * (10**7) * 10) | length }}".to_string(),
        "{{ ('ab' * (10.0**7) * 10) | length }}".to_string(),
        "{{ ('ab' * ('' or 10**8)) | length }}".to_string(),
        "{{ ([1] * 10**12 ~ '') | length }}".to_string(),
        format!("{{{{ [{}] | length }}}}", ["('a' * 10**7)"; 100].join(", ")),
        format!(
            "{{% macro m(x={big}) %}}{{% endmacro %}}{{% for i in range(2) if {big} %}}{{% endfor %}}"
        ),
        // Under the limit each, over it together: the instruction stream keeps them all.
        "{{ 'a' * 10**7 }}".repeat(10),
        // A constant compared, then used: `as_const` folds it anyway.
        format!("{{{{ x ~ ({big} == 'b') }}}}"),
    ] {
        let err = limit_hit(&t, "limit");
        assert!(
            err.contains("memory limit (64 MiB") || err.contains("compile limit"),
            "{t}: {err}"
        );
    }
    // Constants a template really folds still fold, with minijinja's values.
    let t = "{{ 'ab' * 3 }}|{{ 2 ** 10 }}|{{ [1, 2] * 2 }}|{{ 'x' ~ 1 ~ [1] }}|{{ '' or 'd' }}|{{ 1 < 2 < 3 }}|{{ -(3) }}|{{ 'a' * -1 is defined }}";
    assert_eq!(
        render_chat(t, &[], false, "", ""),
        Ok("ababab|1024|[1, 2, 1, 2]|x1[1]|d|True|-3|a".to_string())
    );
}

#[test]
fn long_operator_chains_hit_the_compile_limit() {
    // `compile_expr` refolds a chain at every level: quadratic in its length.
    let t = format!("{{{{ x{} }}}}", " ~ 'a'".repeat(20_000));
    limit_hit(&t, "compile limit");
    let t = format!("{{{{ x{} }}}}", " ~ 'a'".repeat(500));
    assert!(render_chat(&t, &[], false, "", "").is_ok());
}

#[test]
fn printing_filters_bound_shared_lists() {
    let share =
        format!("{NS}{{% for i in range(30) %}}{{% set ns.v = [ns.v, ns.v] %}}{{% endfor %}}");
    for f in [
        "upper",
        "lower",
        "title",
        "capitalize",
        "trim",
        "escape",
        "e",
        "safe",
        "split",
        "lines",
        "pprint",
    ] {
        limit_hit(&format!("{share}{{{{ ns.v | {f} | length }}}}"), "limit");
    }
    limit_hit(
        &format!("{share}{{{{ ns.v is startingwith('x') }}}}"),
        "limit",
    );
    limit_hit(&format!("{share}{{{{ ns.v is in('abc') }}}}"), "limit");
    // The `in` operator prints a non-string left side to search a string for it.
    limit_hit(&format!("{share}{{{{ ns.v in 'abc' }}}}"), "limit");
    limit_hit(&format!("{share}{{{{ ns.v not in 'abc' }}}}"), "limit");
    limit_hit(
        &format!("{share}{{{{ 'a' < 'b' in 'abc' }}}}{{{{ ns.v in 'x' }}}}"),
        "limit",
    );
    // Ordinary `in`, `not in` and chained comparisons keep minijinja's answers.
    let t = "{{ 'b' in 'abc' }}{{ 1 in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 3 not in [1] }}{{ 1 < 2 < 3 }}{{ 1 < 3 < 2 }}{{ [1] in 'x[1]y' }}";
    assert_eq!(
        render_chat(t, &[], false, "", ""),
        Ok("TrueTrueTrueTrueTrueFalseTrue".to_string())
    );
    // Ordinary inputs behave as minijinja's builtins.
    let t = "{{ 'hello wORLD' | title }}|{{ ' a ' | trim }}|{{ 'xaxx' | trim('x') }}|{{ '<a>' | e }}|{{ [1, 'a'] | upper }}|{{ 'a b' | split | length }}|{{ 'a\nb' | lines | list }}|{{ 'ab' is startingwith('a') }}|{{ {'k': [1]} | pprint }}|{{ 'abc' | capitalize }}";
    assert_eq!(
        render_chat(t, &[], false, "", ""),
        Ok("Hello World|a|a|&lt;a&gt;|[1, \"A\"]|2|[\"a\", \"b\"]|True|{\n    \"k\": [\n        1,\n    ],\n}|Abc".to_string())
    );
}

#[test]
fn recursion_is_a_limit() {
    limit_hit(
        "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
        "recursion limit (200",
    );
}

#[test]
fn real_templates_render_unchanged() {
    let gguf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    let Ok(file) = crate::gguf::GgufFile::open(gguf) else {
        eprintln!("{gguf} missing: skipped");
        return;
    };
    let smol = file.get_str("tokenizer.chat_template").unwrap().unwrap();
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi there!"),
    ];
    assert_eq!(
        render_chat(smol, &msgs, true, "", "").unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    );
    let gemma = include_str!("../../../tests/golden/gemma3/chat_template.jinja");
    let out = render_chat(gemma, &[ChatMessage::new("user", "Hi")], true, "<bos>", "").unwrap();
    // tests/golden/gemma3/tokenize.json case 35 (the template adds no BOS).
    assert_eq!(
        out,
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
}

/// One instruction can walk a whole value: comparisons, `in`, tests and calls over a large
/// value in a loop hit the scan limit long before the fuel runs out (they ran for minutes).
#[test]
fn scanning_large_values_in_a_loop_is_bounded() {
    let big = "{% set big = 'ab' * 500000 %}{% set ns = namespace(n=0) %}";
    for body in [
        "{% if 'zz' in big %}x{% endif %}",
        "{% if big == big %}{% endif %}",
        "{{ big | length }}",
        "{{ big.count('b') }}",
        "{% if big is startingwith('zz') %}{% endif %}",
        "{% set ns.n = big.find('zz') %}",
    ] {
        let t = format!("{big}{{% for i in range(100000) %}}{body}{{% endfor %}}");
        limit_hit(&t, "work limit (128 MiB of operands scanned");
    }
    // Calls with their arguments still work, in order.
    let t = "{{ 'a-b-c'.split('-', 1) }}{{ 'abca' | replace('a', 'x') }}{{ range(1, 7, 2) | list }}{{ [3, 1, 2] | sort | join(',') }}{{ 'x' ~ ('%s%s' | format(1, 2)) }}{{ 'ab' is startingwith('a') }}{{ 2 < 3 }}{{ 'b' > 'a' }}";
    assert_eq!(
        render_chat(t, &[], false, "", ""),
        Ok("[\"a\", \"b-c\"]xbcx[1, 3, 5]1,2,3x12TrueTrueTrue".to_string())
    );
}

/// fuzz target `chat`, 2026-12-03: the slowest inputs of a 13-minute run (8-19 s each under
/// AddressSanitizer and coverage tracing, which fails the CI smoke run's 10 s timeout). None
/// hangs: each ends at a limit or renders, and the native time is printed (`--nocapture`).
/// The `replace('a', 'aaaa')` loop searched its one-byte pattern with the general substring
/// search twice per call (size check, then the replacement); it now uses `memchr`.
#[test]
fn slowest_fuzz_inputs_end() {
    const PRELUDE: &str =
        "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='ab', v=[]) %}";
    let rep = "{% set ns.s = ns.s | replace('a', 'aaaa') %}";
    let pprint = "{{ ns.v | pprint | length }}{{ ns.v is startingwith('x') }}";
    let nest = "{% set ns.v = [[ns.v]] %}";
    let cases = [
        (
            format!("{{% for i in range(100000) %}}{rep}{{% endfor %}}{rep}{rep}"),
            Some("memory limit"),
        ),
        (
            format!("{{% for i in range(100000) %}}{pprint}{{% endfor %}}{rep}{rep}"),
            None,
        ),
        (
            format!(
                "{{% for i in range(100000) %}}{nest}{{% endfor %}}{}{{{{ ns.v }}}}",
                nest.repeat(27)
            ),
            Some("limit"),
        ),
        (
            "{% if ns.s | length > 10 %}{% else %}{% for i in range(100000) %}{% if ns.s | length > 10 %}{% set ns.v = [ns.v, ns.v] %}{% else %}{% endif %}{% endfor %}{% endif %}".to_string(),
            None,
        ),
    ];
    for (body, limit) in cases {
        let t = format!("{PRELUDE}{body}");
        let t0 = std::time::Instant::now();
        let r = render_chat(&t, &[], false, "\u{b}", "");
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        match (&r, limit) {
            (Err(e @ ChatError::Limit { .. }), Some(l)) => {
                assert!(e.to_string().contains(l), "{body}: {e}")
            }
            (Ok(_), None) | (Err(ChatError::Limit { .. }), None) => {}
            _ => panic!("{body}: {:?}", r.map(|s| s.len())),
        }
        eprintln!("{dt:>8.1} ms  {:?}", r.map(|s| s.len()));
    }
}
