//! Developer tool: compare our logits with llama.cpp's greedy goldens step by step.
use ember::model::Model;
use ember::session::{KvBudget, Session, SessionConfig};

fn main() {
    let case_name = std::env::args().nth(1).unwrap_or("plain_capital".into());
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::env::var("GOLDEN").unwrap_or("tests/golden/greedy.json".into()),
        )
        .unwrap(),
    )
    .unwrap();
    let m = Model::load(
        std::env::var("MODEL").unwrap_or("models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    )
    .unwrap();
    let cfg = SessionConfig {
        cuda_weights: Default::default(),
        n_ctx: 512,
        kv_budget: KvBudget::FullContext,
        block_size: 16,
        max_batch_tokens: 128,
        max_logits: 1,
        threads: 2,
        kv_type: Default::default(),
        swa_full: false,
    };
    let mut s = Session::new(m, &cfg).unwrap();
    for c in g["cases"].as_array().unwrap() {
        if c["name"] != case_name.as_str() {
            continue;
        }
        let ids = |v: &serde_json::Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        };
        let mut seq = s.new_sequence();
        seq.tokens.extend(ids(&c["prompt_ids"]));
        for (step, next) in ids(&c["generated_ids"]).into_iter().enumerate().take(12) {
            let last = seq.tokens.len() - 1;
            let top5 = c["steps_top5"][step].as_array().unwrap().clone();
            s.eval(
                &mut seq,
                |p| p == last,
                |_, logits, _| {
                    let d: Vec<String> = top5
                        .iter()
                        .map(|t| {
                            let id = t[0].as_u64().unwrap() as usize;
                            let l = t[1].as_f64().unwrap() as f32;
                            format!("{:+.3}", logits[id] - l)
                        })
                        .collect();
                    println!("step {step:2}: ours-llama for top5: {}", d.join(" "));
                },
            )
            .unwrap();
            seq.tokens.push(next);
        }
    }
}
