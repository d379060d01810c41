#!/usr/bin/env python3
"""bench_transformers: the transformers reference for `earshot bench model` — the same measurements on the
same card with the same shapes.

Builds Qwen2AudioForConditionalGeneration from a config.json (the real 7B one is
tests/data/configs/qwen2-audio-7b.json) directly on the device with transformers' weight initialisation
skipped (no checkpoint: the weights are then filled with normal(0, 0.02) on the device, so nothing is timed
on zeros), in bfloat16 with sdpa attention, and measures:

  * time to first token: from 16 kHz samples in memory to the first token id on the host — the
    WhisperFeatureExtractor (as Qwen2AudioProcessor calls it: padding to 30 s, attention mask), the prefill
    forward pass (encoder + decoder), argmax of the last position, .tolist();
  * decode step time at batch B: generate() greedy with min_new_tokens = max_new_tokens (eos ignored); a
    logits processor stamps the time (after a device sync) at every step, the intervals are the steps.

Prompt per sequence, as earshot's bench: P text ids around <|audio_bos|> N x <|AUDIO|> <|audio_eos|>, the
clip a 30 s chirp plus noise. Prints a human summary and, with --json, one JSON object last.
Runs on the CPU too (--device cpu, a tiny config) so the script itself can be tested without a GPU.
"""
import argparse
import json
import math
import statistics
import sys
import time


def synth_clip(seconds):
    import numpy as np

    n = int(seconds * 16000)
    t = np.arange(n) / 16000.0
    rng = np.random.default_rng(7)
    x = 0.3 * np.sin(2 * math.pi * (100 + 120 * t) * t) + 0.01 * (rng.random(n) - 0.5)
    return x.astype(np.float32)


def build_model(config_path, device, dtype):
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    try:  # transformers 5.x
        from transformers.initialization import no_init_weights
    except ImportError:  # 4.x
        from transformers.modeling_utils import no_init_weights
    with open(config_path) as f:
        config = Qwen2AudioConfig.from_dict(json.load(f))
    with torch.device(device), no_init_weights():
        try:
            model = Qwen2AudioForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=dtype)
        except TypeError:  # 4.x spells it torch_dtype
            model = Qwen2AudioForConditionalGeneration._from_config(
                config, attn_implementation="sdpa", torch_dtype=dtype)
    model.eval()
    gen = torch.Generator(device=device).manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm.weight" in name or "layernorm.weight" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model, config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--audio-seconds", type=float, default=30.0)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, WhisperFeatureExtractor

    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t_build = time.perf_counter()
    model, config = build_model(a.config, dev, dtype)
    sync()
    build_s = time.perf_counter() - t_build
    tc = config.text_config
    fe = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)

    clip = synth_clip(a.audio_seconds)
    F = min(len(clip), 480000)
    F = (F + 159) // 160  # valid frames (ceil), SPEC §3.1
    T1 = (F - 1) // 2 + 1
    N = (T1 - 2) // 2 + 1
    P, B, V, audio = a.prompt_tokens, a.batch, tc.vocab_size, config.audio_token_index
    bos_a = audio + 1 if audio + 1 < V else 1
    eos_a = audio + 2 if audio + 2 < V else 2
    pre = P // 2 - 1
    ids = []
    for i in range(P + N):
        t = (1000 + 7919 * i) % min(V, 151000)
        k = i - pre - 1
        ids.append(bos_a if i == pre else audio if 0 <= k < N else eos_a if k == N else (0 if t == audio else t))
    input_ids = torch.tensor([ids] * B, dtype=torch.long, device=dev)
    attn = torch.ones_like(input_ids)

    def features():
        f = fe([clip] * B, sampling_rate=16000, return_attention_mask=True, padding="max_length",
               return_tensors="pt")
        return f["input_features"].to(dev, dtype), f["attention_mask"].to(dev)

    class Stamp(LogitsProcessor):
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores):
            sync()
            self.t.append(time.perf_counter())
            return scores

    eos = tc.eos_token_id if tc.eos_token_id is not None else 0
    ttft, steps = [], []
    with torch.inference_mode():
        for run in range(a.warmup + a.repeats):
            t0 = time.perf_counter()
            feats, fmask = features()
            out = model(input_ids=input_ids, attention_mask=attn, input_features=feats,
                        feature_attention_mask=fmask, use_cache=True)
            first = out.logits[:, -1].argmax(-1).tolist()
            t = time.perf_counter() - t0
            del out
            stamp = Stamp()
            model.generate(input_ids=input_ids, attention_mask=attn, input_features=feats,
                           feature_attention_mask=fmask, max_new_tokens=a.output_tokens,
                           min_new_tokens=a.output_tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos,
                           logits_processor=LogitsProcessorList([stamp]))
            if run >= a.warmup:
                ttft.append(t)
                steps += [y - x for x, y in zip(stamp.t, stamp.t[1:])]
            print(f"  run {run}{' (warm-up)' if run < a.warmup else ''}: time to first token {1e3 * t:.1f} ms "
                  f"(first ids {first[:4]})", file=sys.stderr)
    ttft_ms = 1e3 * statistics.median(ttft)
    step_ms = 1e3 * statistics.median(steps) if steps else float("nan")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    import transformers

    print(f"bench transformers: {name}, {a.dtype}, sdpa, batch {B}, {a.audio_seconds:.1f} s audio "
          f"({N} audio tokens) + {P} text tokens, {a.output_tokens} output tokens, {a.repeats} repeats (median); "
          f"transformers {transformers.__version__}, torch {torch.__version__}; model built in {build_s:.1f} s")
    print(f"  time to first token (samples -> id on host)  {ttft_ms:10.2f} ms")
    print(f"  decode step (batch {B})                       {step_ms:10.3f} ms  ({B * 1e3 / step_ms:.1f} tokens/s)")
    if a.json:
        print(json.dumps({"bench": "transformers", "device": name, "dtype": a.dtype, "attn": "sdpa", "batch": B,
                          "audio_seconds": a.audio_seconds, "audio_tokens": N, "prompt_tokens": P,
                          "output_tokens": a.output_tokens, "repeats": a.repeats, "build_s": round(build_s, 3),
                          "ttft_ms": round(ttft_ms, 4), "decode_ms_per_step": round(step_ms, 4),
                          "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
