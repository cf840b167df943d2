//! The device-call budget of an AR step: with the default VALL-E AR chain a `Sampler::step`
//! (penalties, filters, draw, and the append of each row's token with its stop bookkeeping)
//! is one fused op and no other candle op. The counters are process-wide, so this file holds
//! a single test.

use candle_core::{DType, Device, Tensor};
use sampler_core::diagnostics::{candle_ops, device_calls};
use sampler_core::{
    History, LogitsProcessor, Mode, Result, Sampler, SamplerBuilder, SamplerConfig,
    SamplingContext, StopState,
};

/// A user processor: the fused path cannot run it, so it splits the chain.
#[derive(Clone, Debug)]
struct AddOne;

impl LogitsProcessor for AddOne {
    fn name(&self) -> &'static str {
        "add_one"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        Ok((logits + 1.0)?)
    }
}

fn logits(rows: usize, vocab: usize, step: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * vocab)
        .map(|i| (((i * 7919 + step * 104_729) % 10_007) as f32 / 10_007.0 - 0.5) * 12.0)
        .collect();
    Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap()
}

fn stop_state(rows: usize, max_len: u32, stop_token: u32) -> StopState {
    let dev = Device::Cpu;
    StopState {
        stopped: Tensor::zeros(rows, DType::U8, &dev).unwrap(),
        max_lens: Some(Tensor::full(max_len, rows, &dev).unwrap()),
        stop_token: Some(stop_token),
    }
}

/// Runs `steps` AR steps after one warm-up step; returns the device calls and candle ops of
/// each measured step, and the final lengths.
fn run(sampler: &mut Sampler, rows: usize, steps: usize) -> (Vec<u64>, Vec<u64>, Vec<u32>) {
    let vocab = 1025;
    let dev = Device::Cpu;
    let mut ctx = SamplingContext::new(5).with_history(History::empty(rows, 512, &dev).unwrap());
    let mut stop = stop_state(rows, 400, vocab as u32 - 1);
    sampler
        .step(&logits(rows, vocab, 0), &mut ctx, Some(&mut stop))
        .unwrap();
    let (mut calls, mut ops) = (Vec::new(), Vec::new());
    for step in 1..=steps {
        let x = logits(rows, vocab, step);
        let (c0, o0) = (device_calls(), candle_ops());
        let drawn = sampler.step(&x, &mut ctx, Some(&mut stop)).unwrap();
        calls.push(device_calls() - c0);
        ops.push(candle_ops() - o0);
        assert_eq!(drawn.tokens.dims(), [rows]);
    }
    let lens = ctx.history().unwrap().lens().to_vec1::<u32>().unwrap();
    (calls, ops, lens)
}

#[test]
fn the_default_vall_e_ar_step_is_one_fused_call() {
    for rows in [1usize, 8, 64] {
        let mut s = Sampler::from_config(&SamplerConfig::vall_e_ar(), Mode::Ar).unwrap();
        let (calls, ops, lens) = run(&mut s, rows, 20);
        assert!(
            calls.iter().all(|&c| c == 1),
            "rows {rows}: device calls per step {calls:?}"
        );
        assert!(
            ops.iter().all(|&o| o == 0),
            "rows {rows}: candle ops {ops:?}"
        );
        // The stop token is the last id and the logits favour other ids: every row grew.
        assert!(lens.iter().all(|&n| n > 0), "rows {rows}: lengths {lens:?}");
    }

    // A user processor splits the chain: the step falls back to the general path, still
    // appends, and its calls are counted (more than one).
    let penalty = SamplerBuilder::new(Mode::Ar).repetition_penalty(1.5);
    let filter = SamplerBuilder::new(Mode::Ar).top_k(50.0);
    let mut chain = penalty.build_chain().unwrap();
    chain.push(AddOne);
    for p in filter.build_chain().unwrap().steps() {
        chain.push_boxed(dyn_clone::clone_box(&**p));
    }
    let mut s = Sampler::new(chain, filter.build_selector().unwrap());
    let (calls, _, lens) = run(&mut s, 8, 5);
    assert!(calls.iter().all(|&c| c > 1), "fallback calls {calls:?}");
    assert!(lens.iter().all(|&n| n == 6), "fallback lengths {lens:?}");
}
